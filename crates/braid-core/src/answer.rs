//! Answers to `input` agents, handed to a run while it is in flight.
//!
//! An answer enters once, through [`Pipeline::check_answer`](crate::Pipeline::check_answer), which checks
//! it against the agent's schema and gives a [`CheckedAnswer`]. A run given
//! an [`AnswerInbox`] (in [`RunOptions::answers`](crate::RunOptions)) takes
//! checked answers from the matching [`AnswerSender`] while it runs: the
//! waiting agent completes with the answer and its dependents start at
//! once. A run that has ended (or is ending) no longer listens:
//! [`AnswerSender::deliver`] then says [`Delivery::NotListening`], and the
//! answer goes through the run's store instead (the run waits there, with
//! status `waiting`, and is continued from its checkpoints).
//!
//! ```
//! use braid_core::{Pipeline, RunOptions, RunStatus};
//! use braid_core::answer::{self, Delivery};
//! use serde_json::json;
//!
//! let pipeline = Pipeline::from_yaml_str(r#"
//! pipeline: approval
//! agents:
//!   approve: { kind: input, prompt: Ship it?, writes: [approval] }
//!   ship: { kind: sleep, ms: 0, reads: [approval], writes: [shipped] }
//!   slow: { kind: sleep, ms: 200, writes: [other] }
//! "#).unwrap();
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! let (sender, inbox) = answer::channel();
//! let input = pipeline.check_input(&json!({})).unwrap();
//! let run = pipeline.run(input, RunOptions { answers: Some(inbox), ..RunOptions::default() });
//! let answered = async {
//!     // `slow` keeps the run in flight while `approve` waits.
//!     tokio::time::sleep(std::time::Duration::from_millis(20)).await;
//!     let checked = pipeline.check_answer("approve", &json!(true)).unwrap();
//!     sender.deliver(checked).await
//! };
//! let (report, delivery) = tokio::join!(run, answered);
//! assert_eq!(delivery, Delivery::Applied);
//! assert_eq!(report.status, RunStatus::Completed);
//! assert_eq!(*report.state["approval"], json!(true));
//! # });
//! ```

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::report::AgentStatus;

/// An answer checked against its agent's schema by
/// [`Pipeline::check_answer`](crate::Pipeline::check_answer)(crate::Pipeline::check_answer).
#[derive(Debug, Clone)]
pub struct CheckedAnswer {
    pub(crate) agent: Arc<str>,
    pub(crate) value: Arc<Value>,
}

impl CheckedAnswer {
    /// The `input` agent it answers.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The answer: the value written to the agent's field.
    pub fn value(&self) -> &Value {
        &self.value
    }
}

/// What became of an answer handed to a run in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The agent was waiting and completed with the answer.
    Applied,
    /// The agent is not waiting: not yet reached (`pending`, `running`) or
    /// already ended (answered, timed out, cancelled).
    NotWaiting(AgentStatus),
    /// The run no longer takes answers here (it ended or is ending): answer
    /// it through its store.
    NotListening,
}

pub(crate) struct Answer {
    pub(crate) answer: CheckedAnswer,
    pub(crate) reply: oneshot::Sender<Delivery>,
}

/// Hands answers to one run in flight. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AnswerSender(mpsc::Sender<Answer>);

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("answer", &self.answer)
            .finish()
    }
}

impl AnswerSender {
    /// Hands `answer` to the run and waits for what it made of it.
    pub async fn deliver(&self, answer: CheckedAnswer) -> Delivery {
        let (reply, outcome) = oneshot::channel();
        if self.0.send(Answer { answer, reply }).await.is_err() {
            return Delivery::NotListening;
        }
        outcome.await.unwrap_or(Delivery::NotListening)
    }
}

/// Where a run takes its answers from: give it in
/// [`RunOptions::answers`](crate::RunOptions).
#[derive(Debug, Clone)]
pub struct AnswerInbox(pub(crate) Arc<tokio::sync::Mutex<mpsc::Receiver<Answer>>>);

/// A sender and the inbox it delivers to.
pub fn channel() -> (AnswerSender, AnswerInbox) {
    // Answers are rare; a few may queue while the loop is busy.
    let (tx, rx) = mpsc::channel(16);
    (
        AnswerSender(tx),
        AnswerInbox(Arc::new(tokio::sync::Mutex::new(rx))),
    )
}
