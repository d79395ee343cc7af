//! `kiln dlq list`, `kiln dlq replay` and `kiln dlq rm`: inspect dead letters, resubmit them
//! or remove them.

use std::process::ExitCode;

use async_nats::jetstream;
use kiln_client::dlq::{DeadLetter as Letter, dead_letters};
use kiln_proto::streams::STREAM_DLQ;

use crate::cli::{DlqArgs, DlqCommand, Format, NatsArgs};

pub async fn run(nats: &NatsArgs, args: DlqArgs) -> anyhow::Result<ExitCode> {
    let client = kiln_client::connect_to_jetstream(&nats.connect_options()).await?;
    let js = jetstream::new(client);
    let letters = dead_letters(&js).await?;
    match args.command {
        DlqCommand::List(output) if output.format == Format::Json => {
            super::print_json(&letters)?;
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::List(_) => {
            list(&letters);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { sequences, all } => replay(&js, &letters, &sequences, all).await,
        DlqCommand::Rm { sequences } => remove(&js, &letters, &sequences).await,
    }
}

/// `kiln dlq rm`: remove the letters named by sequence; exit status 2 when one is not there.
async fn remove(
    js: &jetstream::Context,
    letters: &[Letter],
    sequences: &[u64],
) -> anyhow::Result<ExitCode> {
    let mut absent = Vec::new();
    for &sequence in sequences {
        // Only dead letters: a sequence the list does not show was removed or replayed.
        let letter = letters.iter().find(|l| l.sequence == sequence);
        match letter {
            Some(l) if kiln_client::dlq::remove(js, sequence).await? => {
                println!("removed {sequence} ({})", l.id);
            }
            _ => absent.push(sequence.to_string()),
        }
    }
    Ok(not_found(&absent))
}

/// Success when no sequence asked for was `absent`; else say which were not there, exit
/// status 2.
fn not_found(absent: &[String]) -> ExitCode {
    if absent.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "no dead letter with sequence {} in {STREAM_DLQ}; `kiln dlq list` shows the \
         sequences there",
        super::list_ids(absent)
    );
    ExitCode::from(super::EXIT_NOT_FOUND)
}

/// `kiln dlq list`: one line per dead letter.
fn list(letters: &[Letter]) {
    if letters.is_empty() {
        println!("{STREAM_DLQ} is empty");
        return;
    }
    // Columns named, as `kiln status`, `workers` and `ls` name theirs.
    println!(
        "{:>8}  {:<16} {:<28} {:<29} reason",
        "sequence", "subject", "job id", "original subject"
    );
    for l in letters {
        println!(
            "{:>8}  {:<16} {:<28} from {:<24} {}",
            l.sequence, l.subject, l.id, l.original_subject, l.reason
        );
    }
}

/// `kiln dlq replay`: resubmit the letters named by sequence (or all of them) and delete
/// them from the queue. Fails when one was refused; exit status 2 when a sequence is not
/// there.
async fn replay(
    js: &jetstream::Context,
    letters: &[Letter],
    sequences: &[u64],
    all: bool,
) -> anyhow::Result<ExitCode> {
    let mut replayed = 0;
    let mut refused = 0;
    for l in letters
        .iter()
        .filter(|l| all || sequences.contains(&l.sequence))
    {
        let target = match kiln_client::dlq::replay(js, l).await {
            Ok(target) => target,
            Err(kiln_client::Error::Invalid(why)) => {
                eprintln!("{why}");
                refused += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        println!("replayed {} ({}) to {target}", l.sequence, l.id);
        replayed += 1;
    }
    let absent: Vec<String> = sequences
        .iter()
        .filter(|s| !letters.iter().any(|l| l.sequence == **s))
        .map(u64::to_string)
        .collect();
    // `dlq replay 99` with no 99 there says only that (exit 2), not "0 … resubmitted" too.
    if replayed > 0 || refused > 0 || absent.is_empty() {
        println!("{replayed} dead letter(s) resubmitted");
    }
    if refused > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(not_found(&absent))
}
