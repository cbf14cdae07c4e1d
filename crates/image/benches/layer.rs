//! Layer export throughput: `write_layer` (gzip and zstd) against `pigz`
//! and `zstd -T0` compressing a tar of the same tree, all writing a file on
//! the same filesystem. Throughput is reported over the uncompressed size.
//!
//! `cargo bench -p rbuild-image --bench layer`; `RBUILD_BENCH_MB` sets the
//! size of the generated tree (default 500).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rbuild_cache::BlobStore;
use rbuild_image::{entries_from_dir, write_layer, Compression, LayerOptions};

/// A deterministic generator: xorshift64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: &[&str] = &[
    "layer", "image", "build", "return", "static", "const", "function", "value", "error", "string",
    "import", "package", "config", "server", "client", "request", "{", "}", "(", ")", ";", "\n",
    "    ", "if", "else", "for", "0x1f", "42", "true", "false", "null", "self",
];

/// Text that compresses roughly like source code or config files.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

fn noise(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tree of about `mb` MiB: 40% text in large files, 30% incompressible
/// data (like already-compressed assets), 10% zeros, 20% small files.
fn generate(root: &Path, mb: usize) {
    let total = mb << 20;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let chunk = 8 << 20;
    let big = |name: &str, share: usize, rng: &mut Rng, kind: u8| {
        let mut f = fs::File::create(root.join(name)).unwrap();
        let mut left = total * share / 100;
        while left > 0 {
            let n = left.min(chunk);
            let data = match kind {
                0 => text(rng, n),
                1 => noise(rng, n),
                _ => vec![0u8; n],
            };
            f.write_all(&data).unwrap();
            left -= n;
        }
    };
    big("text.log", 40, &mut rng, 0);
    big("assets.bin", 30, &mut rng, 1);
    big("sparse.img", 10, &mut rng, 2);
    let small_total = total * 20 / 100;
    let mut written = 0;
    let mut i = 0;
    while written < small_total {
        let dir = root.join(format!("src/m{:03}", i % 200));
        fs::create_dir_all(&dir).unwrap();
        let len = 1024 + (rng.next() % (40 * 1024)) as usize;
        fs::write(dir.join(format!("f{i}.rs")), text(&mut rng, len)).unwrap();
        written += len;
        i += 1;
    }
}

struct Data {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    tar: PathBuf,
    out: PathBuf,
    bytes: u64,
}

fn data() -> Data {
    let mb = std::env::var("RBUILD_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    generate(&tree, mb);
    let tar = dir.path().join("tree.tar");
    let ok = Command::new("tar")
        .args(["--sort=name", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar failed");
    let bytes = fs::metadata(&tar).unwrap().len();
    let out = dir.path().join("out");
    Data {
        _dir: dir,
        tree,
        tar,
        out,
        bytes,
    }
}

/// Runs `tool args < tar > out`.
fn external(tool: &str, args: &[&str], d: &Data) {
    let ok = Command::new(tool)
        .args(args)
        .stdin(fs::File::open(&d.tar).unwrap())
        .stdout(fs::File::create(&d.out).unwrap())
        .stderr(Stdio::inherit())
        .status()
        .unwrap()
        .success();
    assert!(ok, "{tool} failed");
}

fn bench(c: &mut Criterion) {
    let d = data();
    let store_dir = tempfile::tempdir_in(d.tree.parent().unwrap()).unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let mut g = c.benchmark_group("layer_export");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Bytes(d.bytes));
    for (name, compression, tool, args) in [
        (
            "gzip-6",
            Compression::Gzip { level: 6 },
            "pigz",
            &["-6", "-c"][..],
        ),
        (
            "zstd-1",
            Compression::Zstd { level: 1 },
            "zstd",
            &["-T0", "-1", "-q", "-c"][..],
        ),
    ] {
        let opts = LayerOptions {
            compression,
            source_date_epoch: None,
        };
        g.bench_function(format!("rbuild {name}"), |b| {
            b.iter(|| {
                let entries = entries_from_dir(&d.tree).unwrap();
                let layer = write_layer(&store, entries, &opts).unwrap();
                // Each iteration writes the blob again, like a cold export.
                store.remove(&layer.digest).unwrap();
            })
        });
        g.bench_function(format!("{tool} {}", args.join(" ")), |b| {
            b.iter(|| external(tool, args, &d))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
