//! A probe that proves a loop is being polled: the accept loop answers probes between two
//! accepts, and the node's health checks (watchdog, `/ready`) ask it. An answer proves that
//! the task is polled and not stuck, which a timer alone would not.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// Asks a loop to prove it is being polled.
#[derive(Clone)]
pub struct LoopProbe {
    tx: mpsc::Sender<oneshot::Sender<()>>,
}

/// The loop's side of a [`LoopProbe`]: it answers each request it takes.
pub struct ProbeRequests {
    rx: mpsc::Receiver<oneshot::Sender<()>>,
}

/// A connected probe pair.
pub fn loop_probe() -> (LoopProbe, ProbeRequests) {
    // A probe waits for its answer, so a handful of slots is plenty.
    let (tx, rx) = mpsc::channel(4);
    (LoopProbe { tx }, ProbeRequests { rx })
}

impl LoopProbe {
    /// True when the loop answered within `deadline`.
    pub async fn check(&self, deadline: Duration) -> bool {
        let (reply, answered) = oneshot::channel();
        let asked = async {
            self.tx.send(reply).await.ok()?;
            answered.await.ok()
        };
        matches!(tokio::time::timeout(deadline, asked).await, Ok(Some(())))
    }
}

impl ProbeRequests {
    /// The next probe to answer (`None` once every [`LoopProbe`] is gone).
    pub async fn next(&mut self) -> Option<oneshot::Sender<()>> {
        self.rx.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_probe_is_answered_only_while_the_loop_runs() {
        let (probe, mut requests) = loop_probe();
        let answering = tokio::spawn(async move {
            if let Some(reply) = requests.next().await {
                let _ = reply.send(());
            }
            // Stop answering but keep the receiver: the next probe times out.
            std::future::pending::<()>().await;
        });
        assert!(probe.check(Duration::from_secs(20)).await);
        assert!(!probe.check(Duration::from_millis(50)).await);
        answering.abort();
    }
}
