//! Supervision from the start of the children to the end of the run.

use super::{Event, LocalError, Outcome, Runner, Signals};
use futures::FutureExt;
use std::time::Duration;

/// How often the run's Redis is polled for progress. A generation shorter than this gets no
/// line of its own (the Gaussian example's generation 0 takes about half a second on an idle
/// machine); one snapshot of a loopback Redis every 100 ms costs next to nothing.
const POLL: Duration = Duration::from_millis(100);

impl Runner {
    /// Starts workers and master, then supervises until the master exits, Ctrl-C, or failure.
    pub(super) async fn run_until_done(&mut self, signals: &mut Signals) -> Outcome {
        self.announce();
        // Ctrl-C while Redis was starting: start nothing more.
        if signals.recv().now_or_never().is_some() {
            return Outcome::Stopped;
        }
        for slot in 0..self.slots.len() {
            if let Err(err) = self.spawn_worker(slot) {
                return Outcome::Failed(err);
            }
        }
        if let Err(err) = self.spawn_master() {
            return Outcome::Failed(err);
        }
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = signals.recv() => {
                    return if self.master.is_some() { Outcome::Interrupted } else { Outcome::Stopped };
                }
                Some(event) = self.rx.recv() => match event {
                    Event::WorkerExited { slot, incarnation, status } => {
                        if let Err(err) = self.on_worker_exit(slot, incarnation, status).await {
                            return Outcome::Failed(err);
                        }
                    }
                    Event::MasterLine(line) => {
                        // Progress first, so a generation's line comes before what the master
                        // prints about it (e.g. the summary after the last one).
                        if self.last_poll.elapsed() > Duration::from_millis(20) {
                            self.poll().await;
                        }
                        self.printer.master_line(&line);
                    }
                    Event::MasterExited(Ok(status)) => {
                        self.master = None;
                        self.poll().await;
                        return Outcome::Master(status, self.elapsed());
                    }
                    Event::MasterExited(Err(err)) => {
                        self.master = None;
                        return Outcome::Failed(LocalError::Spawn {
                            what: "the master".into(),
                            program: "wait".into(),
                            cause: err,
                        });
                    }
                },
                _ = tick.tick() => {
                    self.poll().await;
                    if let Err(err) = self.restart_due() {
                        return Outcome::Failed(err);
                    }
                }
            }
        }
    }
}
