//! kiln's roles run inside this process (`kiln demo`, and `kiln-bench`): each a task with a stop signal.

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Roles started in this process; [`LocalRoles::stop`] stops them all and reports the first
/// failure.
#[derive(Default)]
pub struct LocalRoles {
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl LocalRoles {
    pub fn worker(&mut self, client: &async_nats::Client, config: kiln_worker::WorkerConfig) {
        let client = client.clone();
        self.spawn(|stopped| async move {
            kiln_worker::run(client, config, stopped).await?;
            Ok(())
        });
    }

    pub fn aggregator(
        &mut self,
        client: &async_nats::Client,
        config: kiln_aggregator::AggregatorConfig,
    ) {
        let client = client.clone();
        self.spawn(|stopped| async move {
            kiln_aggregator::run(client, config, stopped).await?;
            Ok(())
        });
    }

    pub fn scheduler(
        &mut self,
        client: &async_nats::Client,
        config: kiln_scheduler::SchedulerConfig,
    ) {
        let client = client.clone();
        self.spawn(|stopped| async move {
            kiln_scheduler::run(client, config, stopped).await?;
            Ok(())
        });
    }

    fn spawn<F>(&mut self, role: impl FnOnce(oneshot::Receiver<()>) -> F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        self.stops.push(stop);
        self.tasks.push(tokio::spawn(role(stopped)));
    }

    /// Signal every role to stop and wait for them (workers drain their jobs).
    pub async fn stop(self) -> anyhow::Result<()> {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for task in self.tasks {
            task.await??;
        }
        Ok(())
    }
}
