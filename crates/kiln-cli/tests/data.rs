//! Users' data in and out through the KILN_DATA object store, end to end with real processes:
//! `kiln put`, `kiln submit --input/--output`, `kiln result --output`, `kiln get`, and one
//! stored result per job id for good.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{Cluster, assert_success, stdout};
use kiln_data::HostTensor;
use kiln_data::formats::{encode_npy, encode_png, read_tensor};
use kiln_proto::{ErrorKind, ResultEvent, Status};

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

fn read_npy(path: &std::path::Path) -> HostTensor {
    let bytes = std::fs::read(path).unwrap();
    read_tensor("output", &mut &bytes[..], None, u64::MAX).unwrap()
}

fn result_of(out: &std::process::Output) -> ResultEvent {
    serde_json::from_str(&stdout(out)).expect("--wait prints the result event")
}

/// Values that are exact in f32 products: small integers.
fn matrix(rows: usize, cols: usize, salt: usize) -> HostTensor {
    let data = (0..rows * cols)
        .map(|i| ((i * 7 + salt) % 11) as f32 - 5.0)
        .collect();
    HostTensor::new(vec![rows, cols], data)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_matrices_go_in_by_object_and_the_whole_product_comes_back() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    // 100×80 · 80×70 = 7,000 values: over the 4,096 returned inline.
    let (a, b) = (matrix(100, 80, 1), matrix(80, 70, 3));
    let a_path = write(dir.path(), "a.npy", &encode_npy(&a));
    let b_path = write(dir.path(), "b.npy", &encode_npy(&b));
    let c_path = dir.path().join("c.npy");
    let out = cluster.kiln(&[
        "submit",
        "matmul",
        "--id",
        "mm-1",
        "--input",
        &format!("a=@{a_path}"),
        "--input",
        &format!("b=@{b_path}"),
        "--output",
        c_path.to_str().unwrap(),
    ]);
    assert_success(&out);
    let event = result_of(&out);
    let object = &event.output["object"];
    assert_eq!(object["format"], "npy");
    assert_eq!(object["shape"], serde_json::json!([100, 70]));
    assert_eq!(object["bucket"], "KILN_DATA");
    assert!(event.output.get("c").is_none(), "not inline as well");
    let c = read_npy(&c_path);
    assert_eq!(c.shape, [100, 70]);
    for i in 0..100 {
        for j in 0..70 {
            let want: f32 = (0..80)
                .map(|k| a.data[i * 80 + k] * b.data[k * 70 + j])
                .sum();
            assert_eq!(c.data[i * 70 + j], want, "c[{i}][{j}]");
        }
    }
    // Later: by the job id, and by the object's name.
    let again = dir.path().join("again.npy");
    assert_success(&cluster.kiln(&["result", "mm-1", "--output", again.to_str().unwrap()]));
    assert_eq!(read_npy(&again), c);
    // To standard output: the file's bytes alone there, the result event on stderr.
    let piped = cluster.kiln(&["result", "mm-1", "--output", "-"]);
    assert_success(&piped);
    assert_eq!(piped.stdout, std::fs::read(&again).unwrap());
    assert!(String::from_utf8_lossy(&piped.stderr).contains("\"id\": \"mm-1\""));
    // A file that cannot be made says why (and not to run the same command again, which
    // `kiln submit --output` says: the job has its result then).
    let nowhere = dir.path().join("no-such-folder/c.npy");
    let out = cluster.kiln(&["result", "mm-1", "--output", nowhere.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("job mm-1 has its result, but its output was not written to")
            && stderr.contains("No such file or directory")
            && !stderr.contains("`kiln result mm-1 --output FILE` writes it"),
        "{stderr}"
    );
    // A file named for another format gets the output converted to it.
    let converted = dir.path().join("c.safetensors");
    let out = cluster.kiln(&["result", "mm-1", "--output", converted.to_str().unwrap()]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("safetensors, converted from the stored npy [100, 70]"),
        "{stderr}"
    );
    // In one entry named after the output, as a worker stores it (`--output-format
    // safetensors`) and as an inline output is written.
    let mut file = std::fs::File::open(&converted).unwrap();
    assert_eq!(read_tensor("c", &mut file, Some("c"), u64::MAX).unwrap(), c);
    let name = object["name"].as_str().unwrap();
    let got = dir.path().join("got.npy");
    assert_success(&cluster.kiln(&["get", name, "-o", got.to_str().unwrap()]));
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(&c_path).unwrap()
    );
    // Into a folder, as `cp` writes: under the object's last name there (it said "Is a
    // directory", or "Not a directory" for `-o folder/`).
    let folder = dir.path().join("outputs");
    std::fs::create_dir(&folder).unwrap();
    let base = name.rsplit('/').next().unwrap();
    for to in [
        folder.display().to_string(),
        format!("{}/", folder.display()),
    ] {
        assert_success(&cluster.kiln(&["get", name, "-o", &to]));
        let written = folder.join(base);
        assert_eq!(
            std::fs::read(&written).unwrap(),
            std::fs::read(&c_path).unwrap()
        );
        std::fs::remove_file(written).unwrap();
    }
    // `-o -` is standard output, a folder named `-` or not.
    std::fs::create_dir(dir.path().join("-")).unwrap();
    let out = cluster.kiln_in(dir.path(), &["get", name, "-o", "-"]);
    assert_success(&out);
    assert_eq!(out.stdout, std::fs::read(&c_path).unwrap());
    // A name that ends in no file name (`dir/`) asks for -o, rather than failing to write "".
    assert_success(&cluster.kiln(&["put", &a_path, "--name", "dir/"]));
    let out = cluster.kiln_in(dir.path(), &["get", "dir/"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("object \"dir/\" ends in no file name") && stderr.contains("-o FILE"),
        "{stderr}"
    );
    let named = dir.path().join("dir.npy");
    let out = cluster.kiln(&["get", "dir/", "-o", named.to_str().unwrap()]);
    assert_success(&out);
    assert_eq!(
        std::fs::read(&named).unwrap(),
        std::fs::read(&a_path).unwrap()
    );
    // Anyone may write to the bucket: an output replaced since the job stored it is refused
    // by its digest, and nothing is written.
    assert_success(&cluster.kiln(&["put", &a_path, "--name", name]));
    let replaced = dir.path().join("replaced.npy");
    let out = cluster.kiln(&["result", "mm-1", "--output", replaced.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not the one the job stored"), "{stderr}");
    assert!(!replaced.exists());
    // Removed, it is said to be gone, with what to do; not to put it first.
    assert_success(&cluster.kiln(&["rm", name]));
    let out = cluster.kiln(&["result", "mm-1", "--output", replaced.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("job mm-1's output") && stderr.contains("is no longer in KILN_DATA"),
        "{stderr}"
    );
    assert!(stderr.contains("submit the job again"), "{stderr}");
    assert!(!stderr.contains("put it first"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_is_filtered_and_comes_back_as_a_png() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    // A grey 40×60 image, dark left half and light right half: Sobel finds one vertical edge.
    let pixels = (0..40 * 60)
        .map(|i| if i % 60 < 30 { 0.0 } else { 1.0 })
        .collect();
    let png = encode_png(&HostTensor::new(vec![1, 40, 60], pixels)).unwrap();
    let photo = write(dir.path(), "photo.png", &png);
    let edges = dir.path().join("edges.png");
    let out = cluster.kiln(&[
        "submit",
        "conv2d",
        "-p",
        "filter=sobel",
        "--input",
        &format!("image=@{photo}"),
        "--output",
        edges.to_str().unwrap(),
    ]);
    assert_success(&out);
    let event = result_of(&out);
    assert_eq!(event.output["shape"], serde_json::json!([1, 1, 40, 60]));
    assert_eq!(event.output["object"]["format"], "png");
    let back = kiln_data::formats::decode_image(
        "edges",
        &std::fs::read(&edges).unwrap(),
        1 << 20,
        u64::MAX,
    )
    .unwrap();
    assert_eq!(back.shape, [1, 40, 60]);
    // Interior rows: the edge (clamped to 1) at columns 29 and 30, nothing elsewhere.
    let row = &back.data[20 * 60..21 * 60];
    assert_eq!(row[29], 1.0);
    assert_eq!(row[30], 1.0);
    assert_eq!(row[10], 0.0);
    assert_eq!(row[50], 0.0);

    // A batch as a [B, C, H, W] tensor: the second image's edge runs across instead of down,
    // and each image comes back filtered on its own.
    let vertical: Vec<f32> = (0..40 * 60)
        .map(|i| if i % 60 < 30 { 0.0 } else { 1.0 })
        .collect();
    let horizontal: Vec<f32> = (0..40 * 60)
        .map(|i| if i / 60 < 20 { 1.0 } else { 0.0 })
        .collect();
    let batch = HostTensor::new(vec![2, 1, 40, 60], [vertical, horizontal].concat());
    let batch = write(dir.path(), "batch.npy", &encode_npy(&batch));
    let filtered = dir.path().join("filtered.npy");
    let out = cluster.kiln(&[
        "submit",
        "conv2d",
        "-p",
        "filter=sobel",
        "--input",
        &format!("image=@{batch}"),
        "--output",
        filtered.to_str().unwrap(),
    ]);
    assert_success(&out);
    assert_eq!(
        result_of(&out).output["shape"],
        serde_json::json!([2, 1, 40, 60])
    );
    let back = read_npy(&filtered);
    assert_eq!(back.shape, [2, 1, 40, 60]);
    let at = |b: usize, y: usize, x: usize| back.data[b * 2400 + y * 60 + x].abs();
    assert!(
        at(0, 20, 29) > 1.0 && at(0, 20, 30) > 1.0,
        "{}",
        at(0, 20, 29)
    );
    assert_eq!((at(0, 20, 10), at(0, 10, 45)), (0.0, 0.0));
    assert!(
        at(1, 19, 10) > 1.0 && at(1, 20, 10) > 1.0,
        "{}",
        at(1, 19, 10)
    );
    assert_eq!((at(1, 10, 30), at(1, 30, 50)), (0.0, 0.0));
    // A PNG holds one image: a batch of two asked for as one is refused before it is
    // filtered, saying what to ask for instead.
    let png = dir.path().join("batch.png");
    let out = cluster.kiln(&[
        "submit",
        "conv2d",
        "-p",
        "filter=sobel",
        "--input",
        &format!("image=@{batch}"),
        "--output",
        png.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let result = result_of(&out);
    // Refused as the job was checked, before it reached a device (CONTRACT: `none`).
    assert_eq!(result.device, "none");
    let error = result.error.expect("refused");
    assert_eq!(error.kind, ErrorKind::InvalidInput);
    assert!(
        error
            .message
            .contains("\"output\": \"png\" holds one image, and this job's batch has 2"),
        "{}",
        error.message
    );
    assert!(!png.exists());
    // Nor more than 4 channels: with generated images the sizes are known at once, so it is
    // refused before the job is sent (a worker refused it, and with none of its class
    // running nobody did).
    let out = cluster.kiln(&[
        "submit",
        "conv2d",
        "-p",
        "channels=5",
        "-p",
        "height=64",
        "-p",
        "width=64",
        "--output",
        png.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "\"output\": \"png\" holds 1 to 4 channels (gray, gray and alpha, RGB, RGBA), \
             and this job's image has 5"
        ),
        "{stderr}"
    );
    assert!(stdout(&out).is_empty(), "no result: nothing was sent");
    assert!(!png.exists());

    // A batch of one keeps its batch dimension, as PyTorch's conv2d keeps it (it came back
    // [C, H, W]); the same image given as [C, H, W] comes back inline as [C, H, W].
    let first = HostTensor::new(vec![1, 1, 40, 60], back.data[..2400].to_vec());
    let one = write(dir.path(), "one.npy", &encode_npy(&first));
    let input = HostTensor::new(vec![1, 1, 40, 60], {
        (0..40 * 60)
            .map(|i| if i % 60 < 30 { 0.0 } else { 1.0 })
            .collect()
    });
    std::fs::write(&one, encode_npy(&input)).unwrap();
    let out = cluster.kiln(&[
        "submit",
        "conv2d",
        "-p",
        "filter=sobel",
        "--input",
        &format!("image=@{one}"),
        "--wait",
    ]);
    assert_success(&out);
    let event = result_of(&out);
    assert_eq!(
        event.output["object"]["shape"],
        serde_json::json!([1, 1, 40, 60])
    );
    assert!(event.output.get("image").is_none(), "stored, not inline");
    let single = dir.path().join("single.npy");
    let out = cluster.kiln(&["result", &event.id, "--output", single.to_str().unwrap()]);
    assert_success(&out);
    assert_eq!(
        read_npy(&single),
        first,
        "the first image of the batch of two"
    );
    let unbatched = HostTensor::new(vec![1, 40, 60], input.data.clone());
    let unbatched = write(dir.path(), "unbatched.npy", &encode_npy(&unbatched));
    let out = cluster.kiln(&[
        "submit",
        "conv2d",
        "-p",
        "filter=sobel",
        "--input",
        &format!("image=@{unbatched}"),
        "--wait",
    ]);
    assert_success(&out);
    let image = &result_of(&out).output["image"];
    assert_eq!(image.as_array().map(Vec::len), Some(1), "[C, H, W] inline");
    assert_eq!(image[0].as_array().map(Vec::len), Some(40));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_trained_on_a_csv_predicts_on_new_points() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    // Three tight clusters around (0, 0), (4, 4) and (0, 5).
    let centres = [(0.0f32, 0.0f32), (4.0, 4.0), (0.0, 5.0)];
    let mut csv = String::from("x,y,label\n");
    for i in 0..300 {
        let (x, y) = centres[i % 3];
        let jitter = |k: usize| ((i * 37 + k * 17) % 21) as f32 / 40.0 - 0.25;
        csv.push_str(&format!("{},{},{}\n", x + jitter(1), y + jitter(2), i % 3));
    }
    let points = write(dir.path(), "points.csv", csv.as_bytes());
    let out = cluster.kiln(&[
        "submit",
        "train_mlp",
        "--id",
        "trained",
        "--input",
        &format!("dataset=@{points}"),
        "-p",
        "epochs=30",
        "--wait",
    ]);
    assert_success(&out);
    let trained = result_of(&out);
    assert_eq!(trained.output["validation_samples"], 60);
    assert!(trained.output["final_val_accuracy"].as_f64().unwrap() > 0.95);
    let model = trained.output["object"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(trained.output["object"]["format"], "safetensors");
    // A model is several tensors: a .npy file cannot hold it, and none is written.
    let npy = dir.path().join("model.npy");
    let out = cluster.kiln(&["result", "trained", "--output", npy.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "", "refused before the result is printed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "job trained's output \"{model}\" is a model (several tensors in one safetensors \
             file), which a .npy file cannot hold; write it to a .safetensors file"
        )),
        "{stderr}"
    );
    assert!(!npy.exists());
    // Nor is it an image.
    let png = dir.path().join("model.png");
    let out = cluster.kiln(&["result", "trained", "--output", png.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("whose output is not an image")
            && stderr.contains("write it to a .safetensors file"),
        "{stderr}"
    );
    // Asked for when submitting, it is refused before anything is sent.
    let npy = npy.to_str().unwrap();
    let out = cluster.kiln(&["submit", "train_mlp", "--id", "never", "--output", npy]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("name a .safetensors file"), "{stderr}");
    let status = stdout(&cluster.kiln(&["status", "never"]));
    assert!(status.contains("never: unknown"), "{status}");
    let x = HostTensor::new(vec![3, 2], vec![0.1, -0.1, 3.9, 4.2, 0.2, 5.1]);
    let new_points = write(dir.path(), "new.npy", &encode_npy(&x));
    let out = cluster.kiln(&[
        "submit",
        "mlp_predict",
        "--input",
        &format!("model={model}"),
        "--input",
        &format!("x=@{new_points}"),
        "--wait",
    ]);
    assert_success(&out);
    let predicted = result_of(&out);
    assert_eq!(predicted.output["classes"], serde_json::json!([0, 1, 2]));
}

/// An object whose name holds `#` is stored, and `kiln put` says how a job names it:
/// `--input KEY=NAME#ENTRY` reads the part after `#` as a safetensors entry.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_holding_a_hash_is_told_how_a_job_names_it() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    let v = encode_npy(&HostTensor::new(vec![2], vec![1.0, 2.0]));
    let v = write(dir.path(), "v.npy", &v);
    let out = cluster.kiln(&["put", &v, "--name", "obj#1"]);
    assert_success(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(
            "note: `--input KEY=obj#1` reads as entry \"1\" of object \"obj\"; name this \
             object with -p 'KEY={\"object\":\"obj#1\""
        ),
        "{said}"
    );
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        r#"a={"object":"obj#1"}"#,
        "-p",
        r#"b={"object":"obj#1"}"#,
        "--wait",
    ]);
    assert_eq!(result_of(&out).output["c"], serde_json::json!([2.0, 4.0]));
    let plain = cluster.kiln(&["put", &v, "--name", "plain#"]);
    assert!(!String::from_utf8_lossy(&plain.stderr).contains("note:"));
}

/// `kiln rm` removes objects: `kiln get` and jobs then find none, a name not there is exit
/// status 2 (every name is still tried), and the name can be put again.
#[tokio::test(flavor = "multi_thread")]
async fn removed_objects_are_gone_for_get_and_for_jobs() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    let v = write(
        dir.path(),
        "v.npy",
        &encode_npy(&HostTensor::new(vec![2], vec![1.0, 2.0])),
    );
    assert_success(&cluster.kiln(&["put", &v, "--name", "one"]));
    assert_success(&cluster.kiln(&["put", &v, "--name", "two"]));
    let out = cluster.kiln(&["rm", "one", "never", "two"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    for line in [
        "removed object \"one\" (136 bytes) from KILN_DATA",
        "kiln: no object \"never\" in KILN_DATA",
        "removed object \"two\" (136 bytes) from KILN_DATA",
    ] {
        assert!(said.contains(line), "{said}");
    }
    assert_eq!(
        cluster.kiln(&["get", "one", "-o", "-"]).status.code(),
        Some(2)
    );
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-i",
        "a=one",
        "-i",
        "b=two",
        "--wait",
    ]);
    let error = result_of(&out).error.expect("failed");
    assert_eq!(error.kind, ErrorKind::InvalidInput);
    assert!(
        error
            .message
            .contains("object \"one\" not found in KILN_DATA"),
        "{}",
        error.message
    );
    assert_success(&cluster.kiln(&["put", &v, "--name", "one"]));
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-i",
        "a=one",
        "-i",
        "b=one",
        "--wait",
    ]);
    assert_eq!(result_of(&out).output["c"], serde_json::json!([2.0, 4.0]));
    assert_eq!(
        cluster.kiln(&["rm"]).status.code(),
        Some(2),
        "a name is required"
    );
    // A name no object can have fails (exit 1), and the names after it are still tried.
    let long = "x".repeat(3000);
    let out = cluster.kiln(&["rm", &long, "one"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("is not valid: use a non-empty name of at most 1024 bytes"),
        "{said}"
    );
    assert!(said.contains("removed object \"one\""), "{said}");
}

/// `kiln ls` lists the objects (a prefix narrows it; JSON for scripts, with the bucket's use
/// and the chunks no object names); `kiln rm --prefix` removes what a prefix names, and
/// `kiln rm --orphans` the chunks of uploads that never stored their object, once idle for
/// `--older-than`, never the chunks a stored entry names (one kiln cannot read included).
#[tokio::test(flavor = "multi_thread")]
async fn ls_lists_objects_and_rm_frees_a_prefix_and_abandoned_chunks() {
    let cluster = Cluster::new();
    cluster.init().await;
    let js = jetstream::new(cluster.client().await);
    let dir = tempfile::tempdir().unwrap();
    let v = write(
        dir.path(),
        "v.npy",
        &encode_npy(&HostTensor::new(vec![2], vec![1.0, 2.0])),
    );
    for name in [
        "a.npy",
        "results/j1/c.npy",
        "results/j1/d.npy",
        "results/j2/c.npy",
    ] {
        assert_success(&cluster.kiln(&["put", &v, "--name", name]));
    }
    // Chunks of an upload killed before it stored its info, and a foreign entry (a time
    // async-nats cannot parse) whose chunks are its own, not orphans.
    for _ in 0..3 {
        js.publish("$O.KILN_DATA.C.abandoned", "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    js.publish("$O.KILN_DATA.C.foreignnuid", "abc".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let foreign = serde_json::json!({"name": "foreign", "bucket": "KILN_DATA",
        "nuid": "foreignnuid", "size": 3, "chunks": 1, "mtime": "yesterday"});
    let meta = format!("$O.KILN_DATA.M.{}", base64_url("foreign"));
    js.publish(meta, foreign.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Other clients' oddities: chunks on a subject of two tokens, an entry that is not JSON,
    // and one on a subject that encodes no name.
    for (subject, payload) in [
        ("$O.KILN_DATA.C.two.tokens", "y"),
        ("$O.KILN_DATA.M.bm90anNvbg==", "not json"),
        ("$O.KILN_DATA.M.!!", "{}"),
        // "nopad" in unpadded base64: perhaps an object of a client that writes names so.
        (
            "$O.KILN_DATA.M.bm9wYWQ",
            r#"{"name":"nopad","nuid":"nopadnuid","size":1}"#,
        ),
        ("$O.KILN_DATA.C.nopadnuid", "z"),
    ] {
        js.publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let out = cluster.kiln(&["ls"]);
    assert_success(&out);
    let table = stdout(&out);
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "a.npy",
            "results/j1/c.npy",
            "results/j1/d.npy",
            "results/j2/c.npy",
            "foreign",
            "notjson"
        ],
        "{table}"
    );
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .trim_start()
            .starts_with("136 "),
        "{table}"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("4 objects, 544 bytes;"), "{said}");
    assert!(
        said.contains("4 chunks of 2 uploads that stored no object"),
        "{said}"
    );
    assert!(
        said.contains("2 entries on subjects that encode no object name"),
        "{said}"
    );

    let out = cluster.kiln(&["ls", "results/j1/", "-o", "json"]);
    assert_success(&out);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let listed: Vec<(&str, u64)> = shown["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["name"].as_str().unwrap(), o["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [("results/j1/c.npy", 136), ("results/j1/d.npy", 136)]
    );
    let digest = shown["objects"][0]["sha256"].as_str().unwrap();
    assert_eq!(digest.len(), 64, "{shown}");
    let mut chunks: Vec<u64> = shown["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["chunks"].as_u64().unwrap())
        .collect();
    chunks.sort_unstable();
    assert_eq!(chunks, [1, 3], "{shown}");
    assert_eq!(
        shown["stray"],
        serde_json::json!(["$O.KILN_DATA.M.!!", "$O.KILN_DATA.M.bm9wYWQ"]),
        "{shown}"
    );
    assert_eq!(shown["max_bytes"], 8u64 << 30, "{shown}");
    assert!(shown["bytes"].as_u64().unwrap() > 4 * 136, "{shown}");

    // Fresh chunks may be an upload on its way: left until idle for --older-than.
    let out = cluster.kiln(&["rm", "--orphans"]);
    assert_success(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("removed 0 chunks of 0 uploads that stored no object from KILN_DATA;"),
        "{said}"
    );
    assert!(
        said.contains("left 2 that stored a chunk within 1h"),
        "{said}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = cluster.kiln(&["rm", "--orphans", "--older-than", "1s"]);
    assert_success(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("removed 4 chunks of 2 uploads that stored no object from KILN_DATA\n"),
        "{said}"
    );
    assert_eq!(
        stored_chunks(&js).await,
        4 + 1 + 1,
        "the objects', foreign's and the stray entry's chunks stay"
    );
    let out = cluster.kiln(&["get", "results/j2/c.npy", "-o", "-"]);
    assert_success(&out);
    assert_eq!(out.stdout, std::fs::read(&v).unwrap());

    let out = cluster.kiln(&["rm", "--prefix", "results/j1/"]);
    assert_success(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("removed object \"results/j1/c.npy\" (136 bytes)"),
        "{said}"
    );
    assert!(
        said.contains("removed object \"results/j1/d.npy\" (136 bytes)"),
        "{said}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.kiln(&["ls", "-o", "json"]))).unwrap();
    let left: Vec<&str> = shown["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["a.npy", "results/j2/c.npy"]);
    assert_eq!(
        shown["unreadable"],
        serde_json::json!(["foreign", "notjson"])
    );
    assert_eq!(shown["orphans"], serde_json::json!([]));
    // Entries kiln does not address stay: they may be another client's objects.
    let stray = serde_json::json!(["$O.KILN_DATA.M.!!", "$O.KILN_DATA.M.bm9wYWQ"]);
    assert_eq!(shown["stray"], stray);
    // An entry kiln cannot read goes with the chunks it names, as the listing says.
    let out = cluster.kiln(&["rm", "foreign", "notjson"]);
    assert_success(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("removed object \"foreign\" (3 bytes)"),
        "{said}"
    );
    assert!(
        said.contains("removed object \"notjson\" (0 bytes)"),
        "{said}"
    );
    assert_eq!(stored_chunks(&js).await, 2 + 1);
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.kiln(&["ls", "-o", "json"]))).unwrap();
    assert_eq!(shown["unreadable"], serde_json::json!([]));
    assert_eq!(shown["orphans"], serde_json::json!([]));

    let out = cluster.kiln(&["rm", "--prefix", "results/j1/"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no object named results/j1/…"));
    for usage in [
        &["rm", "--prefix", ""][..],
        &["rm", "--older-than", "1s", "a.npy"],
    ] {
        assert_eq!(cluster.kiln(usage).status.code(), Some(2), "{usage:?}");
    }
    assert_success(&cluster.kiln(&["get", "a.npy", "-o", "/dev/null"]));
    assert_dev_null_is_a_device();
}

/// `kiln init` with a `--data-max-bytes` under what `KILN_DATA` holds says that the bucket
/// now refuses new objects (it was taken without a word).
#[tokio::test(flavor = "multi_thread")]
async fn init_says_when_the_data_bucket_holds_more_than_its_new_limit() {
    let cluster = Cluster::new();
    cluster.init().await;
    let dir = tempfile::tempdir().unwrap();
    let big = write(dir.path(), "big.bin", &vec![7u8; 3 << 20]);
    assert_success(&cluster.kiln(&["put", &big]));
    let out = cluster.kiln(&["init", "--data-max-bytes", "2MiB"]);
    assert_success(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("note: KILN_DATA holds ")
            && said.contains("more than its limit of 2097152: it refuses new objects"),
        "{said}"
    );
    let out = cluster.kiln(&["init"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("note:"));
}

fn assert_dev_null_is_a_device() {
    use std::os::unix::fs::FileTypeExt as _;
    let kind = std::fs::metadata("/dev/null").unwrap().file_type();
    assert!(
        kind.is_char_device(),
        "/dev/null is no longer a device: {kind:?}"
    );
}

/// `kiln get -o` and `kiln result --output` write a device or a pipe in place and a link's
/// file through the link: they wrote a file beside the path and renamed it over it, which
/// made a root user's /dev/null a regular file (and every later `> /dev/null` wrote there),
/// a named pipe's reader got nothing, and a link became a plain file.
#[tokio::test(flavor = "multi_thread")]
async fn get_writes_devices_and_pipes_in_place_and_links_through() {
    use std::os::unix::fs::FileTypeExt as _;
    let cluster = Cluster::new();
    cluster.init().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = encode_npy(&HostTensor::new(vec![3], vec![1.0, 2.0, 3.0]));
    let v = write(dir.path(), "v.npy", &bytes);
    assert_success(&cluster.kiln(&["put", &v, "--name", "v.npy"]));

    assert_success(&cluster.kiln(&["get", "v.npy", "-o", "/dev/null"]));
    assert_dev_null_is_a_device();

    let fifo = dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    assert_success(&cluster.kiln(&["get", "v.npy", "-o", fifo.to_str().unwrap()]));
    assert_eq!(reader.join().unwrap(), bytes);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());

    let target = dir.path().join("target.npy");
    std::fs::write(&target, b"old").unwrap();
    let link = dir.path().join("link.npy");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_success(&cluster.kiln(&["get", "v.npy", "-o", link.to_str().unwrap()]));
    assert!(link.is_symlink(), "the link was replaced by a file");
    assert_eq!(std::fs::read(&target).unwrap(), bytes);
    // A link to a file not made yet makes it; one into a missing folder fails.
    let later = dir.path().join("later.npy");
    let link = dir.path().join("to-later.npy");
    std::os::unix::fs::symlink("later.npy", &link).unwrap();
    assert_success(&cluster.kiln(&["get", "v.npy", "-o", link.to_str().unwrap()]));
    assert!(link.is_symlink(), "the link was replaced by a file");
    assert_eq!(std::fs::read(&later).unwrap(), bytes);
    let nowhere = dir.path().join("to-nowhere.npy");
    std::os::unix::fs::symlink(dir.path().join("missing/x.npy"), &nowhere).unwrap();
    let out = cluster.kiln(&["get", "v.npy", "-o", nowhere.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(nowhere.is_symlink());

    // A pipe's name is not taken for the object's (`<(…)` stored as "63").
    let out = cluster.kiln(&["put", fifo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(
            "is not a regular file, and its name is not one for an object: give one \
             with --name NAME"
        ),
        "{said}"
    );

    // An entry another client wrote that does not parse is said to be so (exit 1), not to be
    // no object (exit 2), as `kiln ls` and jobs say.
    let client = cluster.client().await;
    let entry = format!("$O.KILN_DATA.M.{}", base64_url("v.npy"));
    let js = async_nats::jetstream::new(client);
    let stored = js.get_stream("OBJ_KILN_DATA").await.unwrap();
    let last = stored
        .get_last_raw_message_by_subject(&entry)
        .await
        .unwrap();
    let mut info: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
    info["size"] = serde_json::json!(-5);
    let body = serde_json::to_vec(&info).unwrap();
    js.publish(entry, body.into()).await.unwrap().await.unwrap();
    let out = cluster.kiln(&["get", "v.npy", "-o", "-"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("kiln: object v.npy's entry in KILN_DATA does not parse"),
        "{said}"
    );
}

fn base64_url(name: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE.encode(name)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_objects_are_answered_invalid_input_naming_them() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    let good = encode_npy(&HostTensor::new(vec![4], vec![1.0, 2.0, 3.0, 4.0]));
    let truncated = write(dir.path(), "cut.npy", &good[..good.len() - 3]);
    assert_success(&cluster.kiln(&["put", &truncated, "--name", "cut"]));
    let full = write(dir.path(), "full.npy", &good);
    assert_success(&cluster.kiln(&["put", &full, "--name", "full"]));
    // Headers declaring far more than their objects hold: refused for that, not as over the
    // memory budget (`too_large`), which sent people looking for a bigger worker.
    for (name, shape) in [
        ("huge", "(100000, 100000)"),
        ("overflowing", "(4294967296, 4294967296)"),
    ] {
        let npy = npy_shaped("<f4", shape, 16);
        let file = write(dir.path(), &format!("{name}.npy"), &npy);
        assert_success(&cluster.kiln(&["put", &file, "--name", name]));
    }
    let wrong_digest = format!(r#"{{"object":"full","sha256":"{}"}}"#, "0".repeat(64));
    // A name whose metadata subject would pass the server's control line, which closed the
    // worker's connection (and every other job's on it) on each attempt.
    let long = format!(r#"{{"object":"{}"}}"#, "x".repeat(4000));
    for (b, names) in [
        (r#"{"object":"nowhere"}"#.to_owned(), "nowhere"),
        (r#"{"object":"cut"}"#.to_owned(), "cut"),
        (
            r#"{"object":"huge"}"#.to_owned(),
            "truncated: header says 40000000000 bytes",
        ),
        (
            r#"{"object":"overflowing"}"#.to_owned(),
            "overflow a 64-bit count",
        ),
        (wrong_digest, "full"),
        (long, "at most 1024 bytes"),
    ] {
        let out = cluster.kiln(&[
            "submit",
            "vector_add",
            "-p",
            r#"a={"object":"full"}"#,
            "-p",
            &format!("b={b}"),
            "--wait",
        ]);
        assert!(!out.status.success(), "{b}");
        let event = result_of(&out);
        let error = event.error.expect("an error");
        assert_eq!(
            error.kind,
            ErrorKind::InvalidInput,
            "{b}: {}",
            error.message
        );
        assert!(error.message.contains(names), "{b}: {}", error.message);
        assert!(
            error.message.contains("\"b\""),
            "names the parameter: {}",
            error.message
        );
        assert_eq!(event.attempt, 1, "answered at once: {}", error.message);
    }
    // A name past the limit is refused, and not echoed whole.
    let long = "y".repeat(4000);
    let out = cluster.kiln(&["put", &full, "--name", &long]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at most 1024 bytes"), "{stderr}");
    assert!(stderr.contains("(4000 bytes) is not valid"), "{stderr}");
    assert!(stderr.len() < 400, "{stderr}");
}

/// A `.npy` of two values of numpy dtype `descr`, `bytes` bytes each.
fn npy_of(descr: &str, bytes: usize) -> Vec<u8> {
    npy_shaped(descr, "(2,)", 2 * bytes)
}

/// A `.npy` whose header declares `shape` of numpy dtype `descr`, then `data` zero bytes.
fn npy_shaped(descr: &str, shape: &str, data: usize) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}").into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(&header);
    npy.extend(std::iter::repeat_n(0u8, data));
    npy
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_no_job_can_read_is_refused_before_it_is_sent_and_errors_name_files() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.npy", &npy_of("<f4", 4));
    let complex = write(dir.path(), "complex.npy", &npy_of("<c8", 8));
    let cut_bytes = npy_of("<f4", 4);
    let cut = write(dir.path(), "cut.npy", &cut_bytes[..cut_bytes.len() - 3]);
    let utf16: Vec<u8> = "\u{feff}x,y\n1,0\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let utf16 = write(dir.path(), "points.csv", &utf16);
    std::fs::create_dir(dir.path().join("folder")).unwrap();
    let pair = kiln_data::Model {
        tensors: vec![
            ("p".into(), HostTensor::new(vec![2], vec![1.0, 2.0])),
            ("q".into(), HostTensor::new(vec![2], vec![3.0, 4.0])),
        ],
        metadata: Default::default(),
    };
    let pair = write(
        dir.path(),
        "pair.safetensors",
        &kiln_data::formats::encode_safetensors(&pair).unwrap(),
    );
    for (file, says) in [
        (
            &pair,
            "pair.safetensors holds 2 tensors (\"p\", \"q\"); pick one with",
        ),
        (
            &complex,
            "complex.npy has dtype \"<c8\", which kiln does not read",
        ),
        (
            &cut,
            "cut.npy: truncated: header says 8 bytes of values, found 5",
        ),
        (&utf16, "points.csv is in no format kiln reads"),
    ] {
        let a = format!("a=@{file}");
        let out = cluster.kiln(&[
            "submit",
            "vector_add",
            "-i",
            &a,
            "-i",
            &format!("b=@{good}"),
        ]);
        assert_eq!(out.status.code(), Some(1), "{file}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--input a: file "), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert_eq!(stdout(&out), "", "no job was sent");
    }
    for args in [
        vec!["submit", "vector_add", "-i", "a=@folder", "-i", "b=@folder"],
        vec!["put", "folder"],
    ] {
        let out = cluster.kiln_in(dir.path(), &args);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("folder is a folder: name a file"),
            "{stderr}"
        );
    }
    let stderr = String::from_utf8_lossy(
        &cluster
            .kiln(&["submit", "train_mlp", "-i", &format!("dataset=@{utf16}")])
            .stderr,
    )
    .into_owned();
    assert!(stderr.contains("UTF-16 byte-order mark"), "{stderr}");
    // JSON goes inline for a tensor; a dataset cannot (it was told to).
    let json = write(dir.path(), "rows.json", b"[[1, 2, 0], [3, 4, 1]]");
    let tensor = cluster.kiln(&["submit", "vector_add", "-i", &format!("a=@{json}")]);
    let stderr = String::from_utf8_lossy(&tensor.stderr);
    assert!(
        stderr.contains("looks like JSON: give values inline"),
        "{stderr}"
    );
    let dataset = cluster.kiln(&["submit", "train_mlp", "-i", &format!("dataset=@{json}")]);
    let stderr = String::from_utf8_lossy(&dataset.stderr);
    assert!(
        stderr.contains("looks like JSON") && stderr.contains("a dataset is CSV"),
        "{stderr}"
    );
    assert!(!stderr.contains("give values inline"), "{stderr}");
    // Nothing was stored or sent: no object, no job.
    let js = jetstream::new(cluster.client().await);
    let mut data = js.get_stream("OBJ_KILN_DATA").await.unwrap();
    assert_eq!(data.info().await.unwrap().state.messages, 0);
    let mut jobs = js.get_stream("KILN_JOBS").await.unwrap();
    assert_eq!(jobs.info().await.unwrap().state.messages, 0);

    // `kiln put` stores such a file all the same (an object may be for something else), and
    // says so; a job that names it is answered with the file's name beside the object's.
    let out = cluster.kiln(&["put", &complex, "--name", "waves"]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("note: no job can read it as it is: file ")
            && stderr.contains("complex.npy has dtype \"<c8\""),
        "{stderr}"
    );
    let out = cluster.kiln(&["put", &good, "--name", "good"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("note:"),
        "{out:?}"
    );
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-i",
        "a=waves",
        "-i",
        "b=good",
        "--wait",
    ]);
    let error = result_of(&out).error.expect("an error");
    assert_eq!(error.kind, ErrorKind::InvalidInput, "{}", error.message);
    assert!(
        error
            .message
            .starts_with("parameter \"a\": object waves (file complex.npy) has dtype \"<c8\""),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_over_the_memory_budget_is_refused_before_it_is_read() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.spawn(
        "worker",
        &["worker", "--device", "cpu", "--max-memory-mb", "8"],
    );
    let dir = tempfile::tempdir().unwrap();
    // A vector_add of the tensor `t` with itself, both by object, answered too_large: its error.
    let refused = |name: &str, t: &HostTensor| {
        let path = write(dir.path(), name, &encode_npy(t));
        let out = cluster.kiln(&[
            "submit",
            "vector_add",
            "--input",
            &format!("a=@{path}"),
            "--input",
            &format!("b=@{path}"),
            "--wait",
        ]);
        assert!(!out.status.success());
        let error = result_of(&out).error.expect("an error");
        assert_eq!(error.kind, ErrorKind::TooLarge, "{}", error.message);
        error
    };
    let error = refused(
        "big.npy",
        &HostTensor::new(vec![3 << 20], vec![0.5; 3 << 20]),
    );
    assert!(error.message.contains("MiB"), "{}", error.message);

    // Two objects each within the budget and over it together: refused before either is
    // downloaded (the reservation is cut to the budget, and both loaded held more than it).
    let error = refused(
        "half.npy",
        &HostTensor::new(vec![5 << 18], vec![0.25; 5 << 18]),
    );
    assert!(
        error.message.contains(
            "the job's objects load as 10.0 MiB of f32 values together (a 5.0 MiB, b 5.0 MiB), \
             over this worker's memory budget of 8.0 MiB"
        ),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_id_is_answered_once_even_after_the_duplicate_window() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let first = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "a=[1,2]",
        "-p",
        "b=[3,4]",
        "--id",
        "once",
        "--wait",
    ]);
    assert_success(&first);
    let first = result_of(&first);
    assert_eq!(first.output["c"], serde_json::json!([4.0, 6.0]));
    // The same id again under another Nats-Msg-Id: what a resubmission after the 10-minute
    // duplicate window looks like to the server. It is stored and runs, but its result is
    // refused: the first answer stands.
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "once-later");
    js.publish_with_headers(
        "jobs.cpu.vector_add",
        headers,
        r#"{"id":"once","params":{"a":[10,20],"b":[30,40]}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut jobs = js.get_stream("KILN_JOBS").await.unwrap();
    while jobs.info().await.unwrap().state.messages > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the job was never taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stored, results) = common::stored_results(&client).await;
    assert_eq!(stored, 1, "one stored result for the id");
    assert_eq!(results["once"].output["c"], serde_json::json!([4.0, 6.0]));
    let shown: ResultEvent = serde_json::from_str(&stdout(&cluster.kiln(&["result", "once"])))
        .expect("kiln result prints it");
    assert_eq!(shown.status, Status::Succeeded);
    assert_eq!(shown.output["c"], serde_json::json!([4.0, 6.0]));
}

/// Submitting an id again while the server still keeps the first submission (it drops the
/// second as a duplicate) leaves the first one's input files alone: each submission stores
/// them under a name of its own, and the kept job runs on its own data.
#[tokio::test(flavor = "multi_thread")]
async fn resubmitting_an_id_never_replaces_the_kept_jobs_inputs() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let dir = tempfile::tempdir().unwrap();
    let b = matrix(3, 2, 5);
    let b_path = write(dir.path(), "b.npy", &encode_npy(&b));
    let mut firsts = Vec::new();
    for (n, salt) in [(1, 1), (2, 9)] {
        let a = matrix(2, 3, salt);
        let a_path = write(dir.path(), &format!("a{n}.npy"), &encode_npy(&a));
        let out = cluster.kiln(&[
            "submit",
            "matmul",
            "--id",
            "twice-1",
            "--input",
            &format!("a=@{a_path}"),
            "--input",
            &format!("b=@{b_path}"),
        ]);
        if n == 1 {
            assert_success(&out);
        } else {
            // Another input under the same id is another job, which the server dropped.
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains("with other parameters"), "{stderr}");
        }
        firsts.push(a);
    }
    // The dropped submission's files are not left in KILN_DATA: only the kept job's two.
    let client = cluster.client().await;
    let names = input_objects(&client, "twice-1").await;
    assert_eq!(names.len(), 2, "{names:?}");
    // Only now a worker: the job the server kept is the first.
    cluster.cpu_worker();
    let results = common::wait_for_results(&client, &["twice-1"], Duration::from_secs(60)).await;
    let event = &results["twice-1"];
    assert_eq!(event.status, kiln_proto::Status::Succeeded, "{event:?}");
    let a = &firsts[0];
    let want: Vec<f32> = (0..2)
        .flat_map(|i| (0..2).map(move |j| (i, j)))
        .map(|(i, j)| (0..3).map(|k| a.data[i * 3 + k] * b.data[k * 2 + j]).sum())
        .collect();
    let got: Vec<f32> = event.output["c"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().clone())
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(got, want, "the first submission's product");
}

/// The input objects stored in KILN_DATA for job id `id` (`inputs/<id>/…`).
async fn input_objects(client: &async_nats::Client, id: &str) -> Vec<String> {
    use futures::StreamExt as _;
    let store = jetstream::new(client.clone())
        .get_object_store("KILN_DATA")
        .await
        .unwrap();
    let mut names: Vec<String> = store
        .list()
        .await
        .unwrap()
        .filter_map(|info| async move { info.ok().map(|i| i.name) })
        .filter(|name| std::future::ready(name.starts_with(&format!("inputs/{id}/"))))
        .collect()
        .await;
    names.sort();
    names
}

/// Files stored for a job the server refuses (its queue full) are removed again: a script
/// that retries would otherwise store them again at every try, for `KILN_DATA`'s whole
/// maximum age.
#[tokio::test(flavor = "multi_thread")]
async fn inputs_of_a_refused_job_are_not_left_in_the_store() {
    let cluster = Cluster::new();
    let init = cluster.kiln(&["init", "--max-queued-jobs", "1"]);
    assert_success(&init);
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.npy", &encode_npy(&matrix(2, 3, 1)));
    let b = write(dir.path(), "b.npy", &encode_npy(&matrix(3, 2, 2)));
    let submit = |id: &str| {
        cluster.kiln(&[
            "submit",
            "matmul",
            "--id",
            id,
            "--input",
            &format!("a=@{a}"),
            "--input",
            &format!("b=@{b}"),
        ])
    };
    // No worker: the first fills the queue and keeps its inputs.
    assert_success(&submit("fills-1"));
    let refused = submit("refused-1");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the server refused refused-1"), "{stderr}");
    let client = cluster.client().await;
    assert_eq!(input_objects(&client, "fills-1").await.len(), 2);
    assert_eq!(
        input_objects(&client, "refused-1").await,
        Vec::<String>::new()
    );
}

/// `kiln result --output` writes only what it can: a file named for a format kiln does not
/// write is refused as `kiln submit --output` refuses it, and a job with no output object (its
/// output inline in its result, or a failure) is said to have none, with what to do instead
/// (not the command that just failed). Nothing is written either way.
/// `kiln result ID --output FILE` writes an output the result holds inline (a small matmul's
/// product) as it writes a stored one; PNG is for conv2d's images, and other kinds refuse it
/// (in `kiln result`, in `kiln submit`, and in a worker for a job published by hand) rather
/// than clamp their values to [0, 1] in 8 bits.
#[tokio::test(flavor = "multi_thread")]
async fn result_output_writes_inline_values_and_png_is_for_images() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let a = "a=[[1, -2.5], [30, 4]]";
    let submitted = cluster.kiln(&[
        "submit",
        "matmul",
        "-p",
        a,
        "-p",
        "b=[[1, 0], [0, 2]]",
        "--id",
        "small",
        "--wait",
    ]);
    assert_success(&submitted);
    assert_eq!(
        result_of(&submitted).output["c"],
        serde_json::json!([[1.0, -5.0], [30.0, 8.0]])
    );
    let out = cluster.kiln(&["result", "small", "--output", &path("c.npy")]);
    assert_success(&out);
    let c = read_npy(std::path::Path::new(&path("c.npy")));
    assert_eq!((c.shape, c.data), (vec![2, 2], vec![1.0, -5.0, 30.0, 8.0]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("from the values inline in the result"),
        "{stderr}"
    );
    // As safetensors, one entry named after the output, as a stored one is.
    assert_success(&cluster.kiln(&["result", "small", "--output", &path("c.safetensors")]));
    let bytes = std::fs::read(path("c.safetensors")).unwrap();
    let c = read_tensor("c", &mut &bytes[..], Some("c"), 4).unwrap();
    assert_eq!(c.data, vec![1.0, -5.0, 30.0, 8.0]);
    // To standard output as .npy, as a stored output's bytes go there.
    let piped = cluster.kiln(&["result", "small", "--output", "-"]);
    assert_success(&piped);
    assert_eq!(piped.stdout, std::fs::read(path("c.npy")).unwrap());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        stderr.contains("\"id\": \"small\"") && stderr.contains("wrote standard output"),
        "{stderr}"
    );

    // A matrix is no image: refused before anything is printed or written.
    let out = cluster.kiln(&["result", "small", "--output", &path("c.png")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("job small is a matmul job, whose output is not an image"),
        "{stderr}"
    );
    assert_eq!(stdout(&out), "", "nothing printed");
    assert!(!dir.path().join("c.png").exists());
    let out = cluster.kiln(&[
        "submit",
        "matmul",
        "-p",
        a,
        "-p",
        "b=[[1, 0], [0, 2]]",
        "--id",
        "as-png",
        "--output",
        &path("p.png"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"output\": \"png\" is for images (conv2d's)"),
        "{stderr}"
    );
    assert!(stdout(&cluster.kiln(&["status", "as-png"])).contains("as-png: unknown"));
    // Published by hand, the worker answers it invalid_input.
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    js.publish(
        "jobs.cpu.vector_add",
        r#"{"id":"raw-png","params":{"a":[1,2],"b":[3,4]},"output":"png"}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let results = common::wait_for_results(&client, &["raw-png"], Duration::from_secs(30)).await;
    let error = results["raw-png"].error.clone().expect("refused");
    assert_eq!(error.kind, ErrorKind::InvalidInput);
    assert!(error.message.contains("is for images"), "{}", error.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn result_output_refuses_what_it_cannot_write() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let arg = |p: &std::path::PathBuf| p.to_str().unwrap().to_owned();
    let failed_with = |out: &std::process::Output| {
        assert!(!out.status.success(), "{}", stdout(out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let submit = |id: &str, extra: &[&str]| {
        let base = ["submit", "vector_add", "-p", "len=16", "--id", id, "--wait"];
        cluster.kiln(&[&base[..], extra].concat())
    };
    assert_success(&submit("stored-1", &["--output-format", "npy"]));
    assert_success(&submit("inline-1", &[]));

    // A file in a folder that does not exist is refused before the job is sent (it ran, then
    // failed to write).
    let nowhere = path("no-such-folder/c.npy");
    let stderr = failed_with(&submit("nowhere-1", &["--output", &arg(&nowhere)]));
    assert!(
        stderr.contains(&format!(
            "--output {}: folder {} does not exist",
            nowhere.display(),
            path("no-such-folder").display()
        )),
        "{stderr}"
    );
    std::fs::create_dir(path("a-folder.npy")).unwrap();
    let stderr = failed_with(&submit(
        "nowhere-2",
        &["--output", &arg(&path("a-folder.npy"))],
    ));
    assert!(
        stderr.contains("a-folder.npy is a folder; name a file"),
        "{stderr}"
    );
    let status = cluster.kiln(&["status", "nowhere-2"]);
    assert!(
        stdout(&status).starts_with("nowhere-2: unknown"),
        "{}",
        stdout(&status)
    );
    let status = cluster.kiln(&["status", "nowhere-1"]);
    assert!(
        stdout(&status).starts_with("nowhere-1: unknown"),
        "{}",
        stdout(&status)
    );

    // The stored .npy is not written under a .jpg (or any other) name.
    for name in ["r1.jpg", "r1.txt", "r1"] {
        let file = path(name);
        let stderr = failed_with(&cluster.kiln(&["result", "stored-1", "--output", &arg(&file)]));
        assert!(
            stderr.contains(&format!(
                "--output {}: name a .npy, .safetensors or .png file",
                file.display()
            )),
            "{stderr}"
        );
        assert!(!file.exists(), "{name} was written");
    }
    let stored = path("r1.npy");
    assert_success(&cluster.kiln(&["result", "stored-1", "-o", &arg(&stored)]));
    assert_eq!(read_npy(&stored).shape, [16]);

    // No output object: said as such, with what to do.
    let file = path("inline.npy");
    let out = cluster.kiln(&["result", "inline-1", "--output", &arg(&file)]);
    let stderr = failed_with(&out);
    let event: ResultEvent = serde_json::from_str(&stdout(&out)).expect("the result is printed");
    assert_eq!(event.status, Status::Succeeded);
    assert!(event.output.get("object").is_none(), "{:?}", event.output);
    assert!(
        stderr.contains(&format!(
            "job inline-1 has no output object to write to {}: its output is inline in its \
             result",
            file.display()
        )) && stderr.contains("`kiln result inline-1` prints")
            && stderr.contains("--output-format npy"),
        "{stderr}"
    );
    assert!(!stderr.contains("--output FILE"), "{stderr}");
    assert!(!file.exists());
    // A train_mlp job's object would be its model, which only .safetensors holds: the advice
    // names that (it said npy, which stores a model that `-o m.npy` then refused).
    let trained = cluster.kiln(&[
        "submit",
        "train_mlp",
        "-p",
        "samples=64",
        "-p",
        "epochs=1",
        "--id",
        "model-1",
        "--wait",
    ]);
    assert_success(&trained);
    let stderr = failed_with(&cluster.kiln(&["result", "model-1", "--output", &arg(&file)]));
    assert!(
        stderr.contains("--output-format safetensors")
            && stderr.contains("name a .safetensors file")
            && !stderr.contains("--output-format npy"),
        "{stderr}"
    );

    // A failed job has none either: its failure is named.
    let out = cluster.kiln(&[
        "submit", "matmul", "-p", "n=100000", "--id", "too-big", "--wait",
    ]);
    assert!(
        !out.status.success(),
        "a matmul over the worker's limit fails"
    );
    let stderr = failed_with(&cluster.kiln(&["result", "too-big", "-o", &arg(&file)]));
    assert!(
        stderr.contains("job too-big failed (too_large: ")
            && stderr.contains("so it has no output to write to"),
        "{stderr}"
    );
    assert!(!file.exists());
}

/// The worker's peak resident memory (`VmHWM`), in MiB.
fn peak_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

/// A cluster with one CPU worker on a memory budget of `mib` MiB, whose pulls 100 small jobs
/// have sped up (it holds up to 256 jobs then). The worker is named "worker".
async fn small_budget_worker(mib: &str) -> Cluster {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.spawn(
        "worker",
        &["worker", "--device", "cpu", "--max-memory-mb", mib],
    );
    let small = ["submit", "vector_add", "-p", "len=8", "-n", "100", "--wait"];
    assert_success(&cluster.kiln(&small));
    cluster
}

/// Submit 60 vector adds `id-0` … `id-59` with `args` and wait for them: the worker's peak
/// memory in MiB before and after, and the results, every one succeeded.
async fn burst_of_sixty(
    cluster: &mut Cluster,
    id: &str,
    args: &[&str],
) -> (u64, u64, std::collections::HashMap<String, ResultEvent>) {
    let before = peak_mib(cluster.child("worker").id());
    let submit = ["submit", "vector_add", "--id", id, "-n", "60", "--wait"];
    assert_success(&cluster.kiln(&[&submit[..], args].concat()));
    let client = cluster.client().await;
    let (_, results) = common::stored_results(&client).await;
    for i in 0..60 {
        let event = &results[&format!("{id}-{i}")];
        assert_eq!(event.status, Status::Succeeded, "{event:?}");
    }
    let peak = peak_mib(cluster.child("worker").id());
    eprintln!("worker peak memory: {before} MiB before the burst, {peak} MiB after");
    (before, peak, results)
}

/// A burst of jobs reading objects, after small jobs sped the worker's pulls up (it holds up
/// to 256 jobs then), is loaded a few jobs at a time: every job succeeds on its first
/// delivery, and the worker's memory grows by less than half of what the burst's inputs would
/// take together (60 jobs of two 3 MiB inputs; 93-98 MiB when this was written, on a 16 MiB
/// budget). Every held job started its downloads at once before: the same burst took the
/// worker from 41 to 557 MiB, and one of 250 jobs got its connection closed as a slow
/// consumer, failing and retrying every job it held.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_jobs_reading_objects_loads_within_the_memory_budget() {
    let mut cluster = small_budget_worker("16").await;
    let dir = tempfile::tempdir().unwrap();
    let n = 750_000;
    let x = HostTensor::new(vec![n], (0..n).map(|i| (i % 1000) as f32).collect());
    let path = write(dir.path(), "x.npy", &encode_npy(&x));
    assert_success(&cluster.kiln(&["put", &path, "--name", "burst/x"]));
    let burst = ["--input", "a=burst/x", "--input", "b=burst/x"];
    let (before, peak, results) = burst_of_sixty(&mut cluster, "burst", &burst).await;
    for i in 0..60 {
        let event = &results[&format!("burst-{i}")];
        assert_eq!(event.attempt, 1, "burst-{i} was retried: {event:?}");
    }
    let inputs = (60 * 2 * n as u64 * 4) >> 20;
    assert!(
        peak - before < inputs / 2,
        "peak {peak} MiB, {before} MiB before the burst, {inputs} MiB of inputs"
    );
}

/// A burst of jobs with seeded inputs whose outputs are stored (`--output-format npy`): each
/// output waits in memory until the object store has it, and a job keeps its share of the
/// memory budget until then, so the worker's memory grows by less than twice the budget
/// (60 outputs of 3 MiB on a 16 MiB budget: 15-19 MiB when this was written). Before, a job
/// gave its memory back as soon as it had computed; computing is faster than storing, so
/// every job the worker held computed and waited with its output: 47-141 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_jobs_storing_outputs_stays_within_the_memory_budget() {
    let mut cluster = small_budget_worker("16").await;
    let n = 750_000;
    let len = format!("len={n}");
    let burst = ["-p", &len, "--output-format", "npy"];
    let (before, peak, results) = burst_of_sixty(&mut cluster, "outs", &burst).await;
    for i in 0..60 {
        let event = &results[&format!("outs-{i}")];
        let object = &event.output["object"];
        assert!(
            object["name"].is_string(),
            "outs-{i} stored no output: {event:?}"
        );
    }
    let outputs = (60 * n as u64 * 4) >> 20;
    assert!(
        peak - before < 2 * 16,
        "peak {peak} MiB, {before} MiB before the burst, {outputs} MiB of outputs"
    );
}

/// Small objects that decode large are loaded one after another: what loading takes is told
/// from an object's first chunk and reserved before the download. Twelve jobs on one 12 KB PNG
/// of 3500 × 3500 grey pixels (61 MiB to decode: its pixels and 49 MB of f32 values) on a
/// 64 MiB budget: each decodes, then is refused (conv2d's tensors need more than the budget).
/// The worker's memory grew by 85 MiB when this was written; only the stored bytes were
/// reserved before, and up to six jobs decoded at once: 461 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn small_objects_that_decode_large_load_within_the_memory_budget() {
    let (before, peak) = burst_of_large_decodes(None).await;
    assert!(
        peak - before < 2 * 64,
        "peak {peak} MiB, {before} MiB before the burst"
    );
}

/// The same, with the PNG stored by another client in chunks of 8 bytes, too short to tell a
/// PNG's size from: such an object takes the whole budget, and loads alone (it was counted at
/// its stored bytes).
#[tokio::test(flavor = "multi_thread")]
async fn an_object_in_tiny_chunks_loads_alone() {
    let (before, peak) = burst_of_large_decodes(Some(8)).await;
    assert!(
        peak - before < 2 * 64,
        "peak {peak} MiB, {before} MiB before the burst"
    );
}

/// Twelve conv2d jobs on one blank PNG of 3500 × 3500 pixels on a worker with a 64 MiB budget
/// (each job decodes, then is refused `too_large`), the PNG put by `kiln put` or, with
/// `chunk_size`, by the client's object store in chunks of that many bytes: the worker's peak
/// memory in MiB before and after.
async fn burst_of_large_decodes(chunk_size: Option<usize>) -> (u64, u64) {
    let mut cluster = small_budget_worker("64").await;
    let dir = tempfile::tempdir().unwrap();
    let side = 3500;
    let blank = HostTensor::new(vec![1, side, side], vec![0.0; side * side]);
    let png = encode_png(&blank).unwrap();
    assert!(
        png.len() < 100_000,
        "a blank PNG compresses: {} bytes",
        png.len()
    );
    match chunk_size {
        None => {
            let path = write(dir.path(), "blank.png", &png);
            assert_success(&cluster.kiln(&["put", &path, "--name", "burst/blank.png"]));
        }
        Some(chunk_size) => {
            let js = jetstream::new(cluster.client().await);
            let store = js.get_object_store("KILN_DATA").await.unwrap();
            let meta = jetstream::object_store::ObjectMetadata {
                name: "burst/blank.png".into(),
                chunk_size: Some(chunk_size),
                ..Default::default()
            };
            store.put(meta, &mut &png[..]).await.unwrap();
        }
    }
    let before = peak_mib(cluster.child("worker").id());
    let submit = [
        "submit",
        "conv2d",
        "--id",
        "big",
        "-n",
        "12",
        "-p",
        "filter=sobel",
        "--input",
        "image=burst/blank.png",
        "--wait",
    ];
    // Every job fails (too large), so `--wait` exits non-zero.
    let _ = cluster.kiln(&submit);
    let client = cluster.client().await;
    let ids: Vec<String> = (0..12).map(|i| format!("big-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = common::wait_for_results(&client, &ids, Duration::from_secs(120)).await;
    for id in &ids {
        let error = results[*id].error.clone().expect("too large");
        assert_eq!(error.kind, ErrorKind::TooLarge, "{id}: {}", error.message);
        assert!(error.message.contains("memory limit"), "{}", error.message);
        // Refused once its image was read: its result reports the work it asked for.
        assert!(results[*id].flops > 0.0, "{id}: {:?}", results[*id]);
    }
    let peak = peak_mib(cluster.child("worker").id());
    eprintln!("worker peak memory: {before} MiB before the burst, {peak} MiB after");
    (before, peak)
}

/// An object whose values alone are over the memory budget is refused before it is
/// downloaded, with its size as f32 values: a `u8` `.npy` of 40 MB is 160 MB of them, over a
/// 64 MiB budget (it was downloaded and converted before, and refused once the job was
/// planned).
#[tokio::test(flavor = "multi_thread")]
async fn an_object_over_the_budget_as_values_is_refused_before_it_loads() {
    // Serving before the peak is read: what it took to start is not counted as growth.
    let mut cluster = small_budget_worker("64").await;
    let dir = tempfile::tempdir().unwrap();
    let n = 40_000_000;
    let mut npy = kiln_data::formats::npy_header(&[n]);
    // The header says f32 ('<f4'): make it u8.
    let at = npy.windows(3).position(|w| w == b"<f4").expect("descr");
    npy[at..at + 3].copy_from_slice(b"|u1");
    npy.resize(npy.len() + n, 1);
    let path = write(dir.path(), "bytes.npy", &npy);
    assert_success(&cluster.kiln(&["put", &path, "--name", "big/bytes.npy"]));
    let before = peak_mib(cluster.child("worker").id());
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "--input",
        "a=big/bytes.npy",
        "--input",
        "b=big/bytes.npy",
        "--wait",
    ]);
    assert!(!out.status.success());
    let event = result_of(&out);
    let error = event.error.expect("too large");
    assert_eq!(error.kind, ErrorKind::TooLarge, "{}", error.message);
    assert!(
        error.message.contains(
            "object big/bytes.npy (file bytes.npy) loads as 160000000 bytes (152.6 MiB) of \
             f32 values, over this worker's memory budget of 64.0 MiB"
        ),
        "{}",
        error.message
    );
    let peak = peak_mib(cluster.child("worker").id());
    assert!(peak - before < 40, "peak {peak} MiB, {before} MiB before");
}

/// A job waiting for a place to load its objects ends at a `kiln cancel` within moments, as
/// one waiting for a compute slot does (it waited for a place, then loaded and ran).
#[tokio::test(flavor = "multi_thread")]
async fn a_job_waiting_to_load_its_objects_is_cancelled_at_once() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    // One compute slot: five places to load in, taken below by five long trainings.
    cluster.spawn(
        "worker",
        &["worker", "--device", "cpu", "--compute-slots", "1"],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("x,y,label\n");
    for i in 0..300 {
        csv.push_str(&format!("{},{},{}\n", i % 7, i % 5, i % 3));
    }
    let points = write(dir.path(), "points.csv", csv.as_bytes());
    let dataset = format!("dataset=@{points}");
    // Small jobs first: the worker then holds many jobs at once.
    let small = ["submit", "vector_add", "-p", "len=8", "-n", "50", "--wait"];
    assert_success(&cluster.kiln(&small));
    let long = [
        "submit",
        "train_mlp",
        "--input",
        &dataset,
        "-p",
        "epochs=10000",
    ];
    assert_success(&cluster.kiln(&[&long[..], &["-n", "5", "--id", "hold"]].concat()));
    assert_success(&cluster.kiln(&[&long[..], &["--id", "waits"]].concat()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_success(&cluster.kiln(&["cancel", "waits"]));
    let client = cluster.client().await;
    let results = common::wait_for_results(&client, &["waits"], Duration::from_secs(20)).await;
    let error = results["waits"].error.clone().expect("cancelled");
    assert_eq!(error.kind, ErrorKind::Cancelled, "{}", error.message);
    assert!(
        error.message.contains("waited to load its objects"),
        "{}",
        error.message
    );
    for i in 0..5 {
        assert_success(&cluster.kiln(&["cancel", &format!("hold-{i}")]));
    }
}

/// Chunks of `KILN_DATA` objects in its stream, stored objects' and orphans' alike.
async fn stored_chunks(js: &jetstream::Context) -> usize {
    use futures::StreamExt as _;
    let stream = js.get_stream("OBJ_KILN_DATA").await.unwrap();
    let subjects = stream.info_with_subjects("$O.KILN_DATA.C.>").await.unwrap();
    subjects
        .map(|s| s.map(|(_, count)| count).unwrap_or(0))
        .fold(0, |a, b| async move { a + b })
        .await
}

/// A `.npy` file of `len` float32 zeros, written sparse: gigabytes in no time.
fn sparse_npy(dir: &std::path::Path, name: &str, len: u64) -> String {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({len},), }}");
    let padded = format!("{header:<117}\n");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    bytes.extend_from_slice(padded.as_bytes());
    assert_eq!(bytes.len() % 64, 0);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(bytes.len() as u64 + 4 * len).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Start `kiln <args>` as `name`, wait for `chunks` chunks of it to be stored, send it SIGTERM
/// and return its exit code and log once it has exited.
async fn interrupt_upload(
    cluster: &mut Cluster,
    name: &str,
    args: &[&str],
    chunks: usize,
) -> (Option<i32>, String) {
    let js = jetstream::new(cluster.client().await);
    cluster.spawn(name, args);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stored_chunks(&js).await < chunks {
        assert!(std::time::Instant::now() < deadline, "{}", cluster.report());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let code = terminate(cluster, name, Duration::from_secs(30)).await;
    (code, cluster.log(name))
}

/// Send `name` SIGTERM and return its exit code once it has exited, within `within`.
async fn terminate(cluster: &mut Cluster, name: &str, within: Duration) -> Option<i32> {
    let pid = cluster.child(name).id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = cluster.child(name).try_wait().unwrap() {
            return status.code();
        }
        assert!(std::time::Instant::now() < deadline, "{}", cluster.report());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upload stopped by a signal (`kiln put`, `kiln submit --input` of a file of gigabytes)
/// removes what it stored before it exits 130: its chunks would otherwise count against
/// `--data-max-bytes` for the bucket's whole maximum age, named by no object that `kiln rm`
/// could remove. A submission's inputs stored before the interrupted one go too.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_upload_leaves_nothing_in_the_store() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let js = jetstream::new(cluster.client().await);
    let dir = tempfile::tempdir().unwrap();
    // 2 GiB: far more than the moments before the signal can send.
    let big = sparse_npy(dir.path(), "big.npy", 1 << 29);
    let (code, log) = interrupt_upload(&mut cluster, "put", &["put", &big], 4).await;
    assert_eq!(code, Some(130), "{log}");
    assert!(log.contains("big.npy was not stored"), "{log}");
    assert_eq!(stored_chunks(&js).await, 0, "{log}");
    let listed = cluster.kiln(&["get", "big.npy", "-o", "/dev/null"]);
    assert!(!listed.status.success());

    let small = sparse_npy(dir.path(), "small.npy", 1 << 24);
    let other = sparse_npy(dir.path(), "other.npy", 1 << 29);
    let (a, b) = (format!("a=@{small}"), format!("b=@{other}"));
    let args = [
        "submit",
        "vector_add",
        "--id",
        "cut",
        "--input",
        &a,
        "--input",
        &b,
    ];
    // Past the first input's 129 chunks (64 MiB): the second is on its way.
    let (code, log) = interrupt_upload(&mut cluster, "submit", &args, 140).await;
    assert_eq!(code, Some(130), "{log}");
    assert!(log.contains("no job was submitted"), "{log}");
    assert_eq!(stored_chunks(&js).await, 0, "{log}");
    assert_eq!(
        input_objects(&js.client(), "cut").await,
        Vec::<String>::new()
    );
    let stream = js.get_stream("KILN_JOBS").await.unwrap();
    assert_eq!(stream.cached_info().state.messages, 0);

    // Once its inputs are stored, a submission stopped while it publishes still ends at the
    // signal (catching it for the upload had left it ignored until --wait listened).
    let tiny = write(
        dir.path(),
        "tiny.npy",
        &encode_npy(&HostTensor::new(vec![2], vec![1.0, 2.0])),
    );
    let (a, b) = (format!("a=@{tiny}"), format!("b=@{tiny}"));
    let many = [
        "submit",
        "vector_add",
        "--id",
        "many",
        "--count",
        "50000",
        "--input",
        &a,
        "--input",
        &b,
    ];
    cluster.spawn("many", &many);
    let mut queued = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while queued < 100 {
        assert!(std::time::Instant::now() < deadline, "{}", cluster.report());
        tokio::time::sleep(Duration::from_millis(50)).await;
        queued = js
            .get_stream("KILN_JOBS")
            .await
            .unwrap()
            .cached_info()
            .state
            .messages;
    }
    let code = terminate(&mut cluster, "many", Duration::from_secs(10)).await;
    assert_eq!(code, Some(130), "{}", cluster.log("many"));
    let queued = js
        .get_stream("KILN_JOBS")
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    assert!(queued < 50_000, "{queued}");
}

/// Objects whose shapes do not fit together (a matmul's inner sizes, a vector_add's lengths)
/// are answered naming each parameter's object and file, as DATA.md says every bad-input
/// error does: the shapes alone left people guessing which upload was wrong.
#[tokio::test(flavor = "multi_thread")]
async fn shapes_that_do_not_fit_together_name_their_objects() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "left.npy", &encode_npy(&matrix(3, 5, 1)));
    let b = write(dir.path(), "right.npy", &encode_npy(&matrix(3, 5, 2)));
    for kind in ["matmul", "vector_add"] {
        let v = HostTensor::new(vec![4], vec![1.0; 4]);
        let (a, b) = match kind {
            "matmul" => (a.clone(), b.clone()),
            _ => (
                write(dir.path(), "left.npy", &encode_npy(&v)),
                write(dir.path(), "right.npy", &encode_npy(&matrix(1, 3, 2))),
            ),
        };
        let out = cluster.kiln(&[
            "submit",
            kind,
            "--input",
            &format!("a=@{a}"),
            "--input",
            &format!("b=@{b}"),
            "--wait",
        ]);
        let event = result_of(&out);
        let error = event.error.expect("an error");
        assert_eq!(error.kind, ErrorKind::InvalidInput, "{}", error.message);
        for named in [
            "a: object inputs/",
            "(file left.npy)",
            "b: object inputs/",
            "(file right.npy)",
        ] {
            assert!(error.message.contains(named), "{kind}: {}", error.message);
        }
    }
}
