//! Image JSON (manifest, index, config) and `load` archives built from it:
//! parsing returns a value or an error and a parsed document survives a
//! round trip; `load` either stores a complete, sound image or fails having
//! stored nothing.
//!
//! Input: a mode byte, then parts separated by `\n\xff\n` (bytes no JSON
//! document holds): the top document
//! (`index.json` of an OCI layout, or `manifest.json` of a docker-archive)
//! and up to three blobs. In every part, `@N` is replaced by the hex digest
//! and `#N` by the size of blob N, so mutations reach the checks behind the
//! digest verification.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use rbuild_cache::Digest;
use rbuild_image::{archive, ImageConfig, Index, Manifest, Store};

fn substitute(part: &[u8], blobs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = part.to_vec();
    for (i, b) in blobs.iter().enumerate() {
        let hex = Digest::of_bytes(b).hex();
        out = replace(&out, format!("@{i}").as_bytes(), hex.as_bytes());
        out = replace(&out, format!("#{i}").as_bytes(), b.len().to_string().as_bytes());
    }
    out
}

/// Splits at every `\n\xff\n`.
fn split(data: &[u8]) -> Vec<&[u8]> {
    const SEP: &[u8] = b"\n\xff\n";
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + SEP.len() <= data.len() {
        if &data[i..i + SEP.len()] == SEP {
            out.push(&data[start..i]);
            i += SEP.len();
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&data[start..]);
    out
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

fn round_trips(doc: &[u8]) {
    if let Ok(m) = Manifest::from_json(doc) {
        assert_eq!(Manifest::from_json(&m.to_json()).as_ref(), Ok(&m));
    }
    if let Ok(i) = Index::from_json(doc) {
        assert_eq!(Index::from_json(&i.to_json()).as_ref(), Ok(&i));
    }
    if let Ok(c) = ImageConfig::from_json(doc) {
        let again = ImageConfig::from_json(&c.to_json()).expect("a written config parses");
        assert_eq!(again.to_json(), c.to_json());
    }
}

fn append(tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data).expect("in-memory tar");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut parts = split(rest).into_iter();
    let top = parts.next().unwrap_or_default();
    let raw_blobs: Vec<&[u8]> = parts.take(3).collect();
    // Blobs may name earlier blobs (a manifest names its config and layers).
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    for b in raw_blobs {
        let b = substitute(b, &blobs);
        blobs.push(b);
    }
    let top = substitute(top, &blobs);
    round_trips(&top);
    for b in &blobs {
        round_trips(b);
    }

    let mut tar = tar::Builder::new(Vec::new());
    let oci = mode & 1 == 0;
    if oci {
        append(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        append(&mut tar, "index.json", &top);
        for b in &blobs {
            append(&mut tar, &format!("blobs/sha256/{}", Digest::of_bytes(b).hex()), b);
        }
    } else {
        append(&mut tar, "manifest.json", &top);
        for (i, b) in blobs.iter().enumerate() {
            append(&mut tar, &format!("b{i}"), b);
        }
    }
    let Ok(mut bytes) = tar.into_inner() else {
        return;
    };
    let _ = bytes.flush();

    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let Ok(store) = Store::open(dir.path()) else {
        return;
    };
    match archive::load(&store, bytes.as_slice()) {
        Ok(_) => {
            let problems = store.check().expect("check runs");
            assert!(problems.is_empty(), "load stored a broken image: {problems:?}");
        }
        Err(_) => {
            assert!(
                store.blobs().list().expect("list").is_empty(),
                "a failed load left blobs behind"
            );
            assert!(store.index().expect("index").manifests.is_empty());
        }
    }
});
