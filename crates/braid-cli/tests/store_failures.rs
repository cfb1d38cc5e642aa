//! `braid` when its store fails: a full disk, a save stuck on a database
//! that does not answer (and the signals sent meanwhile), files that are
//! not databases, read-only stores. Driven the way a user drives it. The
//! full-disk and read-only-media tests mount a small tmpfs (root, as CI
//! runs).

mod common;

use common::json_of;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A pipeline file and its store in a fresh folder.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new(pipeline: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pipeline.yaml"), pipeline).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pipeline(&self) -> PathBuf {
        self.path("pipeline.yaml")
    }

    /// `braid` with its store (and spill files) in this folder.
    fn braid(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_braid"));
        command
            .env(
                "BRAID_STORE",
                format!("sqlite://{}", self.path("store.db").display()),
            )
            .env("BRAID_SPILL_DIR", self.path("spill"));
        command
    }

    /// `braid` with the store at `url`.
    fn braid_on(&self, url: &str) -> Command {
        let mut command = self.braid();
        command.env("BRAID_STORE", url);
        command
    }
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills a process by its pid when dropped.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Takes the store's write lock in a process of its own, which holds it
/// until killed, and prints `{"x": 1}` once it holds it.
const LOCKER: &str = r#"
import json, os, sqlite3, sys, time
with open("ran", "a") as log:
    log.write("lock\n")
if os.fork() == 0:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    db = sqlite3.connect("store.db", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    with open("locker.pid.tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename("locker.pid.tmp", "locker.pid")
    time.sleep(120)
    sys.exit(0)
while not os.path.exists("locker.pid"):
    time.sleep(0.01)
print(json.dumps({"x": 1}))
"#;

#[test]
fn a_second_signal_while_the_save_is_stuck_spills_the_run_and_exits_3() {
    let ws = Workspace::new(
        "pipeline: stuck
agents:
  lock: { kind: command, run: [python3, locker.py], writes: [x] }
  slow: { kind: command, run: [sh, -c, 'echo $$ > slow.pid; [ -f fast ] || sleep 30; echo ''{\"s\": 1}'''], reads: [x], writes: [s] }
",
    );
    std::fs::write(ws.path("locker.py"), LOCKER).unwrap();
    let mut child = ws
        .braid()
        .arg("run")
        .arg(ws.pipeline())
        .args(["--output", "json"])
        .current_dir(ws.path(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Read stderr as it comes.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let _locker = KillOnDrop(
        wait_for_file(&ws.path("locker.pid"))
            .trim()
            .parse()
            .unwrap(),
    );
    wait_for_file(&ws.path("slow.pid"));

    // Ctrl-C: the run is cancelled; its final record cannot be written
    // while the lock is held, and braid says what it waits for.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no line about the stuck save; stderr so far: {seen:#?}"));
        seen.push(line.clone());
        if line.contains("waiting for the database") {
            break line;
        }
    };
    assert!(waiting.contains("trying for up to 16.3 s"), "{waiting}");
    assert!(waiting.contains("Ctrl-C again"), "{waiting}");

    // A second signal: out at once, the records spilled, exit 3.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let rest: Vec<String> = lines.try_iter().collect();
    let stderr = [seen, rest].concat().join("\n");
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    let report = json_of(&output);
    assert_eq!(report["status"], "cancelled");
    assert_eq!(report["agents"]["lock"]["status"], "completed");
    assert!(
        stderr.contains("the run cancelled but was not saved") && stderr.contains("kept in"),
        "{stderr}"
    );
    drop(_locker);

    // The next braid to open the store writes the run, whole.
    let run_id = report["run_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let shown = ws
            .braid()
            .args(["runs", "show", run_id, "--output", "json"])
            .output()
            .unwrap();
        // The killed locker's lock goes with its process; a moment may pass.
        if shown.status.success() || Instant::now() > deadline {
            break shown;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = String::from_utf8_lossy(&shown.stderr);
    assert!(stderr.contains("replayed"), "{stderr}");
    let shown = json_of(&shown);
    assert_eq!(shown["status"], "cancelled");
    assert_eq!(shown["agents"]["lock"]["status"], "completed");
    assert_eq!(shown["agents"]["slow"]["status"], "cancelled");
    assert_eq!(shown["state"]["x"], 1);

    // Nothing was lost: resuming runs only what had not completed.
    std::fs::write(ws.path("fast"), "").unwrap();
    let resumed = ws
        .braid()
        .args(["runs", "resume", run_id, "--output", "json"])
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{resumed:?}");
    assert_eq!(json_of(&resumed)["status"], "completed");
    let ran = std::fs::read_to_string(ws.path("ran")).unwrap();
    assert_eq!(
        ran, "lock\n",
        "`lock` completed before the outage: not run again"
    );
}

/// A small tmpfs, mounted for one test (root only).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(kib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and must run the tmpfs tests"
            );
            eprintln!("skipping: cannot mount a tmpfs (not root?)");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn read_only(&self) {
        let done = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(done.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

const THREE: &str = "pipeline: three
agents:
  a: { kind: sleep, ms: 1, writes: [a], value: 1 }
  b: { kind: sleep, ms: 1, reads: [a], writes: [b], value: 2 }
  c: { kind: sleep, ms: 1, reads: [b], writes: [c], value: 3 }
";

/// Fills the file system of the folder given, then prints `{"a": 1}`.
const FILL: &str = r#"
import json, os, sys
fd = os.open(os.path.join(sys.argv[1], "filler"), os.O_WRONLY | os.O_CREAT)
for size in (65536, 4096, 1):
    try:
        while os.write(fd, b"\0" * size) > 0:
            pass
    except OSError:
        pass
os.close(fd)
print(json.dumps({"a": 1}))
"#;

#[test]
fn a_full_disk_exits_3_and_the_run_is_whole_once_replayed() {
    let Some(disk) = Tmpfs::mount(1024) else {
        return;
    };
    // The first agent fills the disk under the run's feet.
    let ws = Workspace::new(&format!(
        "pipeline: filled
agents:
  a: {{ kind: command, run: [python3, fill.py, '{}'], writes: [a] }}
  b: {{ kind: sleep, ms: 1, reads: [a], writes: [b], value: 2 }}
  c: {{ kind: sleep, ms: 1, reads: [b], writes: [c], value: 3 }}
",
        disk.path().display()
    ));
    std::fs::write(ws.path("fill.py"), FILL).unwrap();
    let store = format!("sqlite://{}", disk.path().join("braid.db").display());
    let output = ws
        .braid_on(&store)
        .arg("run")
        .arg(ws.pipeline())
        .args(["--checkpoint", "agent", "--db-write-retries", "0"])
        .args(["--output", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("the run completed but was not saved"),
        "{stderr}"
    );
    assert!(stderr.contains("full"), "{stderr}");
    assert!(stderr.contains("kept in"), "{stderr}");
    let report = json_of(&output);
    assert_eq!(report["state"]["a"], 1);

    // Space again: the next braid to open the store writes what was kept,
    // and says so.
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let run_id = report["run_id"].as_str().unwrap();
    let listed = ws
        .braid_on(&store)
        .args(["runs", "list", "--output", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(stderr.contains("braid: replayed"), "{stderr}");
    assert!(stderr.contains("of 1 run(s)"), "{stderr}");
    assert_eq!(json_of(&listed)[0]["status"], "completed");
    let shown = ws
        .braid_on(&store)
        .args(["runs", "show", run_id, "--output", "json"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&shown.stderr).contains("replayed"),
        "replayed once"
    );
    let shown = json_of(&shown);
    assert_eq!(shown["status"], "completed");
    for agent in ["a", "b", "c"] {
        assert_eq!(shown["agents"][agent]["status"], "completed", "{shown}");
    }
    assert_eq!(shown["state"], report["state"]);
}

#[test]
fn a_file_that_is_not_a_database_is_named_as_such() {
    let ws = Workspace::new(THREE);
    std::fs::write(ws.path("notes.db"), "my notes\n".repeat(200)).unwrap();
    let store = format!("sqlite://{}", ws.path("notes.db").display());
    let output = ws.braid_on(&store).args(["runs", "list"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("file is not a database"), "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");
}

#[test]
fn a_read_only_store_can_be_listed_and_shown() {
    let ws = Workspace::new(THREE);
    let output = ws
        .braid()
        .arg("run")
        .arg(ws.pipeline())
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let run_id = json_of(&output)["run_id"].as_str().unwrap().to_owned();
    let ro = format!("sqlite://{}?mode=ro", ws.path("store.db").display());

    let list = ws
        .braid_on(&ro)
        .args(["runs", "list", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(json_of(&list)[0]["run_id"], run_id.as_str());
    let shown = ws
        .braid_on(&ro)
        .args(["runs", "show", &run_id, "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(json_of(&shown)["status"], "completed");
    let refused = ws
        .braid()
        .arg("run")
        .arg(ws.pipeline())
        .args(["--store", &ro])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("read-only"), "{stderr}");
}

#[test]
fn a_store_on_read_only_media_says_so_and_can_still_be_read() {
    let Some(disk) = Tmpfs::mount(2048) else {
        return;
    };
    let ws = Workspace::new(THREE);
    let store = format!("sqlite://{}", disk.path().join("braid.db").display());
    let output = ws
        .braid()
        .arg("run")
        .arg(ws.pipeline())
        .args(["--store", &store, "--output", "json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let run_id = json_of(&output)["run_id"].as_str().unwrap().to_owned();
    disk.read_only();

    let refused = ws
        .braid()
        .arg("run")
        .arg(ws.pipeline())
        .args(["--store", &store])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");

    let list = ws
        .braid_on(&format!("{store}?mode=ro"))
        .args(["runs", "list", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(json_of(&list)[0]["run_id"], run_id.as_str(), "{list:?}");
}
