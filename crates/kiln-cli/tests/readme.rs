//! The README's CLI examples, run as written, so that they cannot go stale.

mod common;

use common::{Cluster, assert_success};
use kiln_data::HostTensor;
use kiln_data::formats::{encode_npy, read_tensor};

/// The commands of the README's `sh` block under the `readme-cli` marker, one per command
/// (`&&` chains split).
fn readme_commands() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(kiln_testkit::workspace_root().join("README.md"))
        .expect("README.md");
    let after = readme
        .split("<!-- readme-cli")
        .nth(1)
        .expect("the README marks its CLI examples");
    let block = after
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block after the marker");
    block
        .lines()
        .flat_map(|line| line.split("&&"))
        .map(|command| command.split_whitespace().map(str::to_owned).collect())
        .filter(|words: &Vec<String>| !words.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_cli_examples_run_as_written() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    let values = |n: usize, salt: usize| (0..n).map(|i| ((i + salt) % 7) as f32 - 3.0).collect();
    let a = HostTensor::new(vec![300, 200], values(300 * 200, 1));
    let b = HostTensor::new(vec![200, 100], values(200 * 100, 2));
    std::fs::write(dir.path().join("a.npy"), encode_npy(&a)).unwrap();
    std::fs::write(dir.path().join("b.npy"), encode_npy(&b)).unwrap();
    let photo = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 128])
    });
    photo.save(dir.path().join("photo.jpg")).unwrap();
    let mut csv = String::from("x,y,label\n");
    for i in 0..240 {
        let class = i % 2;
        let offset = (i % 13) as f32 / 26.0;
        csv.push_str(&format!(
            "{},{},{class}\n",
            class as f32 * 3.0 + offset,
            offset
        ));
    }
    std::fs::write(dir.path().join("points.csv"), csv).unwrap();

    let commands = readme_commands();
    assert!(commands.len() >= 4, "{commands:?}");
    for command in &commands {
        assert_eq!(command[0], "kiln", "{command:?}");
        let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
        assert_success(&cluster.kiln_in(dir.path(), &args));
    }
    let bytes = std::fs::read(dir.path().join("c.npy")).expect("c.npy written");
    let c = read_tensor("c.npy", &mut &bytes[..], None, u64::MAX).unwrap();
    assert_eq!(c.shape, [300, 100]);
    let c00: f32 = (0..200).map(|k| a.data[k] * b.data[k * 100]).sum();
    assert_eq!(c.data[0], c00);
    let edges = std::fs::read(dir.path().join("edges.png")).expect("edges.png written");
    let edges = kiln_data::formats::decode_image("edges.png", &edges, 1 << 20, u64::MAX).unwrap();
    assert_eq!(edges.shape, [3, 48, 64]);
}
