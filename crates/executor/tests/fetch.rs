//! `ADD <url>` downloads against an HTTP server on 127.0.0.1 run by the
//! test itself.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::thread::JoinHandle;

use rbuild_cache::Digest;
use rbuild_executor::copy::{apply, CopyOptions, CopySource};
use rbuild_executor::fetch::{download, FetchError};

/// Serves the given raw responses, one per connection, in order; returns
/// the base URL and a handle yielding the request paths seen.
fn serve(responses: Vec<Vec<u8>>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let handle = std::thread::spawn(move || {
        let mut paths = Vec::new();
        for response in responses {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            reader.read_line(&mut request_line).expect("request line");
            paths.push(
                request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string(),
            );
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).expect("header") == 0 || line == "\r\n" {
                    break;
                }
            }
            stream.write_all(&response).expect("respond");
        }
        paths
    });
    (base, handle)
}

fn ok_response(body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn downloads_stream_verify_and_keep_last_modified() {
    // Larger than any single buffer, so the copy really streams.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let want = Digest::of_bytes(&body);
    let (base, server) = serve(vec![
        ok_response(&body, "Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n"),
        ok_response(&body, ""),
    ]);
    let dir = tempfile::tempdir().expect("dir");
    let dest = dir.path().join("file");
    let url = format!("{base}/releases/tool.tar.gz?sig=abc");
    let got = download(&url, Some(want), &dest).expect("download");
    assert_eq!(got.digest, want);
    assert_eq!(got.size, body.len() as u64);
    assert_eq!(got.file_name, "tool.tar.gz");
    assert_eq!(fs::read(&dest).expect("read"), body);
    let meta = fs::metadata(&dest).expect("stat");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.mtime(), 1_445_412_480);

    // A wrong checksum: error, and neither the file nor a temp file remains.
    let dest2 = dir.path().join("other");
    let wrong = Digest::of_bytes(b"something else");
    let err = download(&url, Some(wrong), &dest2).expect_err("mismatch");
    assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
    assert!(!dest2.exists());
    assert_eq!(fs::read_dir(dir.path()).expect("readdir").count(), 1);
    assert_eq!(
        server.join().expect("server"),
        ["/releases/tool.tar.gz?sig=abc"; 2]
    );
}

#[test]
fn statuses_redirects_names_and_schemes() {
    let (base, server) = serve(vec![
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        b"HTTP/1.1 302 Found\r\nLocation: /real/data.bin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_vec(),
        ok_response(b"payload", "Content-Disposition: attachment; filename=\"dir/named.bin\"\r\n"),
    ]);
    let dir = tempfile::tempdir().expect("dir");
    let err = download(&format!("{base}/missing"), None, &dir.path().join("m")).expect_err("404");
    match &err {
        FetchError::Status { status, url } => {
            assert_eq!(*status, 404);
            assert!(url.ends_with("/missing"));
        }
        other => panic!("{other}"),
    }
    let got = download(&format!("{base}/moved"), None, &dir.path().join("r")).expect("redirect");
    assert_eq!(got.file_name, "named.bin");
    assert_eq!(fs::read(dir.path().join("r")).expect("read"), b"payload");
    assert_eq!(got.last_modified, None);
    assert_eq!(
        server.join().expect("server"),
        ["/missing", "/moved", "/real/data.bin"]
    );
    let err = download("ftp://127.0.0.1/x", None, &dir.path().join("f")).expect_err("scheme");
    assert!(matches!(err, FetchError::Scheme { .. }), "{err}");
}

#[test]
fn add_url_copies_the_download_without_extracting() {
    let (base, server) = serve(vec![ok_response(b"not a tar", "")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let dl = tmp.path().join("dl");
    let got = download(&format!("{base}/pkg/app.tgz"), None, &dl).expect("download");
    server.join().expect("server");
    let rootfs = tempfile::tempdir().expect("rootfs");
    let opts = CopyOptions {
        extract_archives: true,
        ..Default::default()
    };
    let src = CopySource::File {
        path: &dl,
        name: &got.file_name,
    };
    apply(rootfs.path(), src, "/opt/", "/", &opts).expect("copy");
    let out = rootfs.path().join("opt/app.tgz");
    assert_eq!(fs::read(&out).expect("read"), b"not a tar");
    let meta = fs::metadata(&out).expect("stat");
    assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o600, 0, 0));
}
