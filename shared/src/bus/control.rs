//! The typed request/reply helper of the cluster control plane, for what is not a queue
//! (the master's shared state, snapshot pages, client record lookups, registrations).
//! Each exchange is a type naming its subject, question, answer and timeout; [`Bus::ask`]
//! and [`Bus::serve`] are the only places a control message is encoded or decoded, and
//! a failed ask says whether nobody answered or the answer was bad.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use talon_core::Shutdown;

use super::Bus;

/// One request/reply exchange of the control plane.
pub trait Exchange: 'static {
    /// Where the question is asked.
    const SUBJECT: &'static str;
    /// How long an asker waits for the answer.
    const TIMEOUT: Duration;
    /// What is asked.
    type Question: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What is answered.
    type Answer: Serialize + DeserializeOwned + Send + 'static;
}

/// Why an ask failed.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no answer on {subject} within {timeout:?}")]
    NoAnswer {
        subject: &'static str,
        timeout: Duration,
    },
    #[error("bad answer on {subject}: {source}")]
    BadAnswer {
        subject: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot ask on {subject}: {source}")]
    Send {
        subject: &'static str,
        #[source]
        source: async_nats::RequestError,
    },
}

/// Why serving an exchange could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: &'static str,
        #[source]
        source: async_nats::SubscribeError,
    },
    #[error("cannot confirm the subscription to {subject}: {source}")]
    Flush {
        subject: &'static str,
        #[source]
        source: async_nats::client::FlushError,
    },
}

impl Bus {
    /// Asks the exchange's question and decodes its answer.
    pub async fn ask<E: Exchange>(&self, question: &E::Question) -> Result<E::Answer, AskError> {
        let body = serde_json::to_vec(question).expect("control questions serialise");
        let reply = tokio::time::timeout(E::TIMEOUT, self.client.request(E::SUBJECT, body.into()))
            .await
            .map_err(|_| AskError::NoAnswer {
                subject: E::SUBJECT,
                timeout: E::TIMEOUT,
            })?
            .map_err(|source| match source.kind() {
                async_nats::RequestErrorKind::NoResponders
                | async_nats::RequestErrorKind::TimedOut => AskError::NoAnswer {
                    subject: E::SUBJECT,
                    timeout: E::TIMEOUT,
                },
                _ => AskError::Send {
                    subject: E::SUBJECT,
                    source,
                },
            })?;
        serde_json::from_slice(&reply.payload).map_err(|source| AskError::BadAnswer {
            subject: E::SUBJECT,
            source,
        })
    }

    /// Answers the exchange with `answer` until `shutdown`, in a task named `name`.
    /// Returns once the server has the subscription. A question that does not decode is
    /// logged and not answered (the asker sees no answer).
    pub async fn serve<E, F, Fut>(
        &self,
        shutdown: &Shutdown,
        name: &'static str,
        answer: F,
    ) -> Result<(), ServeError>
    where
        E: Exchange,
        F: Fn(E::Question) -> Fut + Send + 'static,
        Fut: Future<Output = E::Answer> + Send,
    {
        let mut questions =
            self.client
                .subscribe(E::SUBJECT)
                .await
                .map_err(|source| ServeError::Subscribe {
                    subject: E::SUBJECT,
                    source,
                })?;
        self.client
            .flush()
            .await
            .map_err(|source| ServeError::Flush {
                subject: E::SUBJECT,
                source,
            })?;
        let (client, stop) = (self.client.clone(), shutdown.clone());
        shutdown.spawn(name, async move {
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = questions.next() => match m { Some(m) => m, None => break },
                };
                let Some(reply) = m.reply else { continue };
                let question = match serde_json::from_slice::<E::Question>(&m.payload) {
                    Ok(q) => q,
                    Err(e) => {
                        tracing::warn!(subject = E::SUBJECT, error = %e, "undecodable control question");
                        continue;
                    }
                };
                let body = serde_json::to_vec(&answer(question).await)
                    .expect("control answers serialise");
                if let Err(e) = client.publish(reply, body.into()).await {
                    tracing::warn!(subject = E::SUBJECT, error = %e, "cannot send a control answer");
                }
            }
        });
        Ok(())
    }
}
