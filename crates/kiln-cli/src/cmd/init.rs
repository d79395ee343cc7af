use std::process::ExitCode;

use kiln_proto::streams;

use crate::cli::NatsArgs;

pub async fn run(nats: &NatsArgs) -> anyhow::Result<ExitCode> {
    let client = kiln_client::connect(&nats.connect_options()).await?;
    let js = async_nats::jetstream::new(client);
    if let Err(e) = streams::update_all(&js, &super::topology(nats)).await {
        // JetStream's "replicas > 1 not supported in non-clustered mode".
        if nats.replicas > 1 && e.to_string().contains("error code 10074") {
            anyhow::bail!(
                "--replicas {} needs a JetStream cluster of at least {} servers, and this \
                 nats-server is not clustered: use --replicas 1 (the default) with it",
                nats.replicas,
                nats.replicas
            );
        }
        return Err(e.into());
    }
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
    for name in [
        format!("OBJ_{}", kiln_proto::BUCKET_DATA),
        streams::STREAM_JOBS.to_owned(),
    ] {
        if let Some(note) = over_limit(&js, &name).await {
            eprintln!("note: {note}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What stream `name` holds past limits just lowered, if it refuses new messages when full
/// (`KILN_DATA`, `KILN_JOBS`): the server keeps what it holds, and refuses every new message
/// until enough go. (A lower `--data-max-bytes` was taken without a word.)
async fn over_limit(js: &async_nats::jetstream::Context, name: &str) -> Option<String> {
    use async_nats::jetstream::stream::DiscardPolicy;
    let mut stream = js.get_stream(name).await.ok()?;
    let info = stream.info().await.ok()?;
    let (config, state) = (&info.config, &info.state);
    if config.discard != DiscardPolicy::New {
        return None;
    }
    let bytes = u64::try_from(config.max_bytes)
        .ok()
        .filter(|max| state.bytes > *max);
    let messages = u64::try_from(config.max_messages)
        .ok()
        .filter(|max| state.messages > *max);
    let what = match name.strip_prefix("OBJ_") {
        Some(_) => "new objects until enough are removed (`kiln ls`, `kiln rm`) or age out",
        None => "new jobs until workers take enough",
    };
    // The object store by its name, as everything else of kiln's names it.
    let name = name.strip_prefix("OBJ_").unwrap_or(name);
    match (bytes, messages) {
        (Some(max), _) => Some(format!(
            "{name} holds {} bytes, more than its limit of {max}: it refuses {what}",
            state.bytes
        )),
        (None, Some(max)) => Some(format!(
            "{name} holds {} messages, more than its limit of {max}: it refuses {what}",
            state.messages
        )),
        (None, None) => None,
    }
}
