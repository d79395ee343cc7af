use std::process::ExitCode;

use kiln_proto::streams;

use crate::cli::NatsArgs;

pub async fn run(nats: &NatsArgs) -> anyhow::Result<ExitCode> {
    let client = kiln_client::connect(&nats.connect_options()).await?;
    let js = async_nats::jetstream::new(client);
    streams::update_all(&js, &super::topology(nats)).await?;
    println!(
        "streams {}, {}, {}, {}, {}, consumers {}, {}, {}, {}, {}, buckets {}, {}, {} and object store {} are \
         ready ({} replica(s))",
        streams::STREAM_JOBS,
        streams::STREAM_RESULTS,
        streams::STREAM_METRICS,
        streams::STREAM_DLQ,
        streams::STREAM_ADVISORIES,
        streams::CONSUMER_WORKERS_GPU,
        streams::CONSUMER_WORKERS_CPU,
        streams::CONSUMER_SCHEDULER,
        streams::CONSUMER_AGGREGATOR,
        streams::CONSUMER_DEAD_LETTERS,
        kiln_proto::BUCKET_WORKERS,
        kiln_proto::BUCKET_CANCEL,
        kiln_proto::BUCKET_STATE,
        kiln_proto::BUCKET_DATA,
        nats.replicas
    );
    Ok(ExitCode::SUCCESS)
}
