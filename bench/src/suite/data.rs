//! The data path: jobs whose inputs and outputs travel through the `KILN_DATA` object store.
//!
//! Two cases run against one private nats-server and one `kiln worker --device cpu` process:
//!
//! - **matmul by object**: two n×n f32 `.npy` tensors uploaded, a matmul naming them, its n×n
//!   output stored as `.npy` and downloaded — six object transfers in all (client put a, b;
//!   worker get a, b; worker put c; client get c). The same six transfers of the same byte
//!   counts, done raw with async-nats' object store on the same server in the same run, are
//!   the ceiling: `rate ratio = raw transfer time / kiln's time outside compute`. The worker
//!   process's peak resident memory during the job (`/proc/PID/status` VmHWM, reset through
//!   `clear_refs` before the job) less its resident memory before it, over the three tensors'
//!   bytes, is the memory ratio.
//! - **a JPEG through conv2d and back as PNG**: one job at a time, its latency split as the
//!   overhead table splits it, plus the upload and the download.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use indicatif::ProgressBar;
use kiln_data::store::Bucket;
use kiln_data::{HostTensor, store};
use kiln_kernels::JobMeta;
use kiln_proto::{Codec, DeviceClass, ObjectDescriptor, OutputMode, ResultEvent, Status, streams};
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt as _;

use super::overhead::{quantile, wait_for};
use kiln_cli::cli::NatsArgs;
use kiln_client::{JobSpec, publish_all};

pub const METHOD: &str = "one private nats-server (file store) and one `kiln worker --device cpu` \
    process; matmul by object: client uploads a and b (.npy), submits, the worker downloads both, \
    multiplies and stores c (.npy), the client downloads c; raw = the same six transfers (put a, \
    put b, get a, get b, put c, get c) with async-nats' object store, same server, same run; \
    rate ratio = raw time / (kiln end to end − compute); worker memory = peak RSS during the job \
    (VmHWM after clear_refs) − RSS before it, over the bytes of a, b and c; medians over the runs";

/// Where one job's time went, in milliseconds (medians over the runs).
#[derive(Debug, Clone, Serialize)]
pub struct Split {
    /// Client uploads of the inputs.
    pub upload_ms: f64,
    /// Publish → stored.
    pub submit_ms: f64,
    /// Stored → taken by the worker.
    pub queue_ms: f64,
    /// The worker's time outside compute: downloading and decoding the inputs, encoding and
    /// storing the output.
    pub worker_ms: f64,
    pub compute_ms: f64,
    /// Finished → result received by the client.
    pub result_ms: f64,
    /// The client's download of the output.
    pub download_ms: f64,
    /// First upload started → output downloaded.
    pub end_to_end_ms: f64,
}

/// The matmul-by-object case against the raw object store.
#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    pub case: String,
    pub runs: usize,
    /// Bytes moved through the store by the six transfers.
    pub bytes_moved: u64,
    pub raw_ms: f64,
    pub raw_mib_s: f64,
    /// kiln end to end − compute.
    pub kiln_transfer_ms: f64,
    pub kiln_mib_s: f64,
    /// raw_ms / kiln_transfer_ms: 1 is the raw object store's rate.
    pub rate_ratio: f64,
    pub split: Split,
    /// The three tensors' bytes (a, b and c as f32).
    pub tensor_mib: f64,
    pub worker_rss_before_mib: f64,
    pub worker_peak_mib: f64,
    /// (peak − before) / tensor bytes, the largest over the runs.
    pub memory_ratio: f64,
}

/// The JPEG → conv2d → PNG case.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    pub case: String,
    pub jobs: usize,
    pub jpeg_bytes: u64,
    pub png_bytes: u64,
    pub split: Split,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub method: &'static str,
    pub transfer: Transfer,
    pub image: Image,
}

/// One CSV row per case.
#[derive(Debug, Clone, Serialize)]
pub struct CsvRow {
    pub case: String,
    pub upload_ms: f64,
    pub submit_ms: f64,
    pub queue_ms: f64,
    pub worker_ms: f64,
    pub compute_ms: f64,
    pub result_ms: f64,
    pub download_ms: f64,
    pub end_to_end_ms: f64,
    pub raw_ms: Option<f64>,
    pub rate_ratio: Option<f64>,
    pub memory_ratio: Option<f64>,
}

impl Section {
    pub fn csv_rows(&self) -> Vec<CsvRow> {
        let row = |case: &str, s: &Split, t: Option<&Transfer>| CsvRow {
            case: case.to_owned(),
            upload_ms: s.upload_ms,
            submit_ms: s.submit_ms,
            queue_ms: s.queue_ms,
            worker_ms: s.worker_ms,
            compute_ms: s.compute_ms,
            result_ms: s.result_ms,
            download_ms: s.download_ms,
            end_to_end_ms: s.end_to_end_ms,
            raw_ms: t.map(|t| t.raw_ms),
            rate_ratio: t.map(|t| t.rate_ratio),
            memory_ratio: t.map(|t| t.memory_ratio),
        };
        vec![
            row(
                &self.transfer.case,
                &self.transfer.split,
                Some(&self.transfer),
            ),
            row(&self.image.case, &self.image.split, None),
        ]
    }
}

/// One job's times, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    upload: f64,
    submit: f64,
    queue: f64,
    worker: f64,
    compute: f64,
    result: f64,
    download: f64,
    end_to_end: f64,
}

fn median_split(samples: &[Sample]) -> Split {
    let m = |f: fn(&Sample) -> f64| quantile(samples.iter().map(f).collect(), 0.5);
    Split {
        upload_ms: m(|s| s.upload),
        submit_ms: m(|s| s.submit),
        queue_ms: m(|s| s.queue),
        worker_ms: m(|s| s.worker),
        compute_ms: m(|s| s.compute),
        result_ms: m(|s| s.result),
        download_ms: m(|s| s.download),
        end_to_end_ms: m(|s| s.end_to_end),
    }
}

pub async fn measure(nats: &NatsArgs, quick: bool, bar: &ProgressBar) -> anyhow::Result<Section> {
    let (n, runs, image_jobs) = if quick { (512, 1, 2) } else { (4096, 3, 10) };
    let mut rig = Rig::start(nats).await?;
    bar.set_length((2 * runs + image_jobs + 2) as u64);
    let transfer = rig.transfer(n, runs, bar).await?;
    let image = rig.image(image_jobs, bar).await?;
    rig.stop().await;
    Ok(Section {
        method: METHOD,
        transfer,
        image,
    })
}

/// What both cases run against: a private nats-server, its object store, and one CPU worker
/// process. Fields drop in order, the client before its server.
struct Rig {
    /// Every result on the server.
    results: async_nats::Subscriber,
    worker: tokio::process::Child,
    /// The worker process's id, for its memory figures.
    pid: u32,
    bucket: Bucket,
    js: jetstream::Context,
    client: async_nats::Client,
    server: kiln_testkit::NatsServer,
    /// This run's id, in every job id and object name.
    run: String,
}

/// One timed run of matmul by object, and the same transfers raw.
struct TransferRun {
    sample: Sample,
    raw_ms: f64,
    /// The worker's resident memory before the job and its peak during it, in bytes.
    rss_before: u64,
    rss_peak: u64,
}

impl Rig {
    /// Start the server and the worker, and wait until the worker is live.
    async fn start(nats: &NatsArgs) -> anyhow::Result<Self> {
        let (server, nats) = crate::private_server(nats)?;
        let client = kiln_client::connect(&nats.connect_options()).await?;
        let js = jetstream::new(client.clone());
        let topology = kiln_cli::cmd::topology(&nats);
        streams::ensure_all(&js, &topology).await?;
        let bucket = store::open(&js).await?;
        let exe = crate::kiln_binary()?;
        let run = kiln_proto::new_job_id();
        let name = format!("data-{run}");
        let worker = tokio::process::Command::new(&exe)
            .args(["worker", "--device", "cpu", "--no-warmup", "--name", &name])
            .env("NATS_URL", &nats.nats_url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let pid = worker.id().context("the worker process has an id")?;
        super::scaling::wait_live(&js, &name, 1).await?;
        let results = client.subscribe("results.>").await?;
        Ok(Self {
            results,
            worker,
            pid,
            bucket,
            js,
            client,
            server,
            run,
        })
    }

    /// matmul by object against the raw object store; run 0 is an untimed warm-up.
    async fn transfer(
        &mut self,
        n: usize,
        runs: usize,
        bar: &ProgressBar,
    ) -> anyhow::Result<Transfer> {
        bar.set_message(format!("matmul {n}×{n} by object"));
        let a = tensor(n, 1);
        let b = tensor(n, 2);
        let npy_bytes = kiln_data::formats::npy_header(&[n, n]).len() as u64 + (n * n * 4) as u64;
        let mut measured = Vec::new();
        for i in 0..=runs {
            let run = self.matmul_by_object(i, [&a, &b], npy_bytes, bar).await?;
            if i > 0 {
                measured.push(run);
            }
        }
        Ok(transfer_figures(n, npy_bytes, &measured))
    }

    /// Run `i` of matmul by object, its memory watched, then the same six transfers raw.
    async fn matmul_by_object(
        &mut self,
        i: usize,
        [a, b]: [&HostTensor; 2],
        npy_bytes: u64,
        bar: &ProgressBar,
    ) -> anyhow::Result<TransferRun> {
        let rss_before = rss(self.pid, "VmRSS")?;
        reset_peak(self.pid)?;
        let id = format!("data-{}-mm-{i}", self.run);
        let started = Instant::now();
        let a_ref = put_timed(&self.bucket, &format!("{id}/a.npy"), a).await?;
        let b_ref = put_timed(&self.bucket, &format!("{id}/b.npy"), b).await?;
        let upload = started.elapsed();
        let params = json!({"a": {"object": a_ref}, "b": {"object": b_ref}});
        let (event, mut sample) = self.job("matmul", params, &id, OutputMode::Npy).await?;
        let download = download(&self.bucket, &event).await?;
        sample.upload = ms(upload);
        sample.download = download.0;
        sample.end_to_end = ms(started.elapsed());
        let rss_peak = rss(self.pid, "VmHWM")?;
        bar.inc(1);
        // The same six transfers, raw.
        let raw_ms = raw_transfers(&self.bucket, &format!("{id}/raw"), npy_bytes).await?;
        bar.inc(1);
        for object in [a_ref, b_ref, download.1] {
            let _ = self.bucket.delete(&object).await;
        }
        Ok(TransferRun {
            sample,
            raw_ms,
            rss_before,
            rss_peak,
        })
    }

    /// A JPEG through conv2d, back as PNG; job 0 is an untimed warm-up.
    async fn image(&mut self, jobs: usize, bar: &ProgressBar) -> anyhow::Result<Image> {
        let jpeg = jpeg_of_about(1 << 20)?;
        bar.set_message(format!("conv2d on a {} KiB JPEG", jpeg.len() / 1024));
        let mut samples = Vec::new();
        let mut png_bytes = 0;
        for i in 0..=jobs {
            let id = format!("data-{}-img-{i}", self.run);
            let object = format!("{id}/photo.jpg");
            let started = Instant::now();
            store::put_reader(&self.bucket, &object, &mut &jpeg[..]).await?;
            let upload = started.elapsed();
            let params = json!({"image": {"object": object}, "filter": "sobel"});
            let (event, mut sample) = self.job("conv2d", params, &id, OutputMode::Png).await?;
            let (download, output) = download(&self.bucket, &event).await?;
            sample.upload = ms(upload);
            sample.download = download;
            sample.end_to_end = ms(started.elapsed());
            png_bytes = object_of(&event).map_or(0, |o| o.size);
            for name in [object, output] {
                let _ = self.bucket.delete(&name).await;
            }
            bar.inc(1);
            if i > 0 {
                samples.push(sample);
            }
        }
        Ok(Image {
            case: format!(
                "conv2d sobel on a {:.2} MiB JPEG, PNG out",
                mib(jpeg.len() as u64)
            ),
            jobs: samples.len(),
            jpeg_bytes: jpeg.len() as u64,
            png_bytes,
            split: median_split(&samples),
        })
    }

    /// Submit one job asking for its output as an object, and wait for its result: the event
    /// and its split (upload, download and end to end left for the caller).
    async fn job(
        &mut self,
        kind: &str,
        params: serde_json::Value,
        id: &str,
        output: OutputMode,
    ) -> anyhow::Result<(ResultEvent, Sample)> {
        let entry = kiln_kernels::find(kind).context("the suite's kinds are registered")?;
        let meta = JobMeta {
            id: Some(id.to_owned()),
            seed: None,
            timeout_ms: None,
            output,
        };
        let spec = JobSpec::build(entry, DeviceClass::Cpu, params, meta, Codec::Json)?;
        let submitted = OffsetDateTime::now_utc();
        publish_all(&self.js, [spec], false, || {}).await?;
        let event = wait_for(&mut self.results, id, Duration::from_secs(600)).await?;
        let received = OffsetDateTime::now_utc();
        anyhow::ensure!(
            event.status == Status::Succeeded,
            "{kind} by object failed: {}",
            event.error.map(|e| e.to_string()).unwrap_or_default()
        );
        let ms = |d: time::Duration| d.as_seconds_f64() * 1e3;
        let sample = Sample {
            submit: ms(event.enqueued_at - submitted),
            queue: event.queue_ms,
            worker: event.total_ms - event.queue_ms - event.compute_ms,
            compute: event.compute_ms,
            result: ms(received - event.finished_at),
            ..Sample::default()
        };
        Ok((event, sample))
    }

    /// Stop the worker, then close the client before its server stops (else it warns of a
    /// lost connection).
    async fn stop(self) {
        let Rig {
            results,
            mut worker,
            bucket,
            js,
            client,
            server,
            ..
        } = self;
        let _ = worker.start_kill();
        let _ = worker.wait().await;
        drop((results, bucket, js));
        let _ = client.drain().await;
        drop(server);
    }
}

/// The matmul-by-object figures from the timed runs: medians, and the largest memory rise.
fn transfer_figures(n: usize, npy_bytes: u64, runs: &[TransferRun]) -> Transfer {
    let samples: Vec<Sample> = runs.iter().map(|r| r.sample).collect();
    let tensor_bytes = 3 * (n * n * 4) as u64;
    let raw_ms = quantile(runs.iter().map(|r| r.raw_ms).collect(), 0.5);
    let kiln_transfer_ms = quantile(
        samples.iter().map(|s| s.end_to_end - s.compute).collect(),
        0.5,
    );
    let moved = 6 * npy_bytes;
    let rate = |ms: f64| {
        if ms > 0.0 {
            mib(moved) / (ms / 1e3)
        } else {
            0.0
        }
    };
    let (before, peak) = runs
        .iter()
        .map(|r| (r.rss_before, r.rss_peak))
        .max_by_key(|(b, p)| p.saturating_sub(*b))
        .unwrap_or_default();
    Transfer {
        case: format!("matmul {n}×{n} f32 by object (.npy in, .npy out)"),
        runs: runs.len(),
        bytes_moved: moved,
        raw_ms,
        raw_mib_s: rate(raw_ms),
        kiln_transfer_ms,
        kiln_mib_s: rate(kiln_transfer_ms),
        rate_ratio: if kiln_transfer_ms > 0.0 {
            raw_ms / kiln_transfer_ms
        } else {
            0.0
        },
        split: median_split(&samples),
        tensor_mib: mib(tensor_bytes),
        worker_rss_before_mib: mib(before),
        worker_peak_mib: mib(peak),
        memory_ratio: peak.saturating_sub(before) as f64 / tensor_bytes as f64,
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// An n×n tensor of small varied values.
fn tensor(n: usize, salt: usize) -> HostTensor {
    let data = (0..n * n)
        .map(|i| ((i * 7 + salt * 13) % 101) as f32 / 101.0 - 0.5)
        .collect();
    HostTensor {
        shape: vec![n, n],
        data,
    }
}

/// Upload `tensor` as `.npy` object `name`; its name back.
async fn put_timed(bucket: &Bucket, name: &str, tensor: &HostTensor) -> anyhow::Result<String> {
    store::put_tensor(bucket, name, tensor, "npy", "").await?;
    Ok(name.to_owned())
}

fn object_of(event: &ResultEvent) -> Option<ObjectDescriptor> {
    serde_json::from_value(event.output.get("object")?.clone()).ok()
}

/// Download the object the result names, as `kiln get` does (digest checked): milliseconds
/// taken and the object's name.
async fn download(bucket: &Bucket, event: &ResultEvent) -> anyhow::Result<(f64, String)> {
    let object = object_of(event).context("the result names no stored output")?;
    let started = Instant::now();
    let mut sink = tokio::io::sink();
    let got = store::get_to_writer(bucket, &object.name, &mut sink).await?;
    anyhow::ensure!(
        got.size == object.size && got.sha256 == object.sha256,
        "the downloaded output does not match its descriptor"
    );
    Ok((ms(started.elapsed()), object.name))
}

/// Put and get `bytes` bytes three times as kiln's path does (put a, put b, get a, get b,
/// put c, get c) with the object store alone: milliseconds.
async fn raw_transfers(bucket: &Bucket, prefix: &str, bytes: u64) -> anyhow::Result<f64> {
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let names = [0, 1, 2].map(|i| format!("{prefix}-{i}"));
    let mut buf = Vec::with_capacity(bytes as usize);
    let started = Instant::now();
    for name in &names[..2] {
        bucket.put(name.as_str(), &mut &data[..]).await?;
    }
    for name in &names[..2] {
        buf.clear();
        bucket.get(name).await?.read_to_end(&mut buf).await?;
    }
    bucket.put(names[2].as_str(), &mut &data[..]).await?;
    buf.clear();
    bucket.get(&names[2]).await?.read_to_end(&mut buf).await?;
    let elapsed = ms(started.elapsed());
    anyhow::ensure!(
        buf.len() as u64 == bytes,
        "the raw get returned {} bytes",
        buf.len()
    );
    for name in &names {
        let _ = bucket.delete(name).await;
    }
    Ok(elapsed)
}

/// A photo-like RGB JPEG (smooth gradients with grain) of at least `bytes` bytes.
fn jpeg_of_about(bytes: usize) -> anyhow::Result<Vec<u8>> {
    let mut side = 512u32;
    loop {
        let img = image::RgbImage::from_fn(side, side * 3 / 4, |x, y| {
            let grain = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 7) % 48;
            image::Rgb([
                ((x * 255 / side) as u8).wrapping_add(grain as u8),
                ((y * 255 / side) as u8).wrapping_add((grain / 2) as u8),
                (((x + y) * 127 / side) as u8).wrapping_add((grain / 3) as u8),
            ])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .context("encoding the benchmark's JPEG")?;
        if out.len() >= bytes || side >= 8192 {
            return Ok(out);
        }
        side = side * 5 / 4;
    }
}

/// A field of `/proc/PID/status` (VmRSS, VmHWM) in bytes.
fn rss(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the worker's /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| format!("/proc/{pid}/status has no {field}"))
}

/// Reset the process's peak resident memory (VmHWM) to its current resident memory.
fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the worker's peak memory (/proc/{pid}/clear_refs)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_jpeg_is_about_a_mebibyte() {
        let jpeg = jpeg_of_about(1 << 20).unwrap();
        assert!(jpeg.len() >= 1 << 20, "{} bytes", jpeg.len());
        assert!(jpeg.len() < 2 << 20, "{} bytes", jpeg.len());
        let decoded = image::load_from_memory(&jpeg).unwrap();
        assert!(decoded.width() >= 512);
    }

    #[test]
    fn medians_per_part() {
        let s = |x: f64| Sample {
            upload: x,
            submit: x,
            queue: x,
            worker: x,
            compute: x,
            result: x,
            download: x,
            end_to_end: 7.0 * x,
        };
        let split = median_split(&[s(1.0), s(3.0), s(2.0)]);
        assert_eq!(split.upload_ms, 2.0);
        assert_eq!(split.end_to_end_ms, 14.0);
    }
}
