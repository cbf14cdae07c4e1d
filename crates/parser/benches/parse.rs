//! Parse throughput over a large generated Dockerfile (every instruction kind, continuations,
//! heredocs, JSON and shell forms). Reports bytes/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// About 4 MiB of varied Dockerfile text.
fn generate() -> String {
    let mut s = String::from("# syntax=docker/dockerfile:1\nARG BASE=alpine:3.20\n");
    let mut i = 0;
    while s.len() < 4 << 20 {
        s.push_str(&format!(
            "FROM --platform=$BUILDPLATFORM ${{BASE}} AS stage{i}\n\
             ENV A{i}=1 B{i}=\"two words\" \\\n    C{i}=three\n\
             LABEL org.example.n{i}=\"{i}\" maintainer=\"x@example.com\"\n\
             RUN --mount=type=cache,target=/var/cache/apk,sharing=locked \\\n\
             \x20   # comment inside a continuation\n\
             \x20   apk add --no-cache curl git && \\\n\
             \x20   echo done {i}\n\
             RUN <<EOF\nset -e\necho heredoc {i}\nEOF\n\
             COPY --from=stage0 --chown=1000:1000 --chmod=644 /src/a /src/b /dst/\n\
             ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/f{i} /f\n\
             WORKDIR /app/{i}\nUSER app:app\nEXPOSE 80/tcp 443\nVOLUME [\"/data\", \"/logs\"]\n\
             HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD [\"curl\", \"-f\", \"http://localhost/\"]\n\
             ENTRYPOINT [\"/bin/app\", \"--serve\"]\nCMD echo $HOME\n\n"
        ));
        i += 1;
    }
    s
}

fn bench(c: &mut Criterion) {
    let text = generate();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(10);
    g.bench_function("dockerfile_4MiB", |b| {
        b.iter(|| rbuild_parser::parse(std::hint::black_box(&text)).expect("generated file parses"))
    });
    g.bench_function("nodes_4MiB", |b| {
        b.iter(|| {
            rbuild_parser::parse_nodes(std::hint::black_box(&text)).expect("generated file parses")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
