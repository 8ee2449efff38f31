//! End-to-end tests of the image store on real files, with qemu-img.

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Cursor, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nimbus_image::{
    ChunkId, ExportFormat, ImageError, ImageStore, ImportRequest, Kind, ManifestName,
};

#[test]
fn raw_round_trip_random_and_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("disk.raw");
    let size = mixed_file(&src, 1);
    let store = store_at(&dir.path().join("store"), None);

    let mut calls = 0;
    let m = store
        .import_file(&ImportRequest::image("disk"), &src, &mut |p| {
            calls += 1;
            assert!(p.done_bytes <= p.total_bytes.unwrap());
        })
        .unwrap();
    assert!(calls > 1, "progress is reported");
    assert_eq!(m.size, size);
    assert_eq!(m.format.source_format, "raw");
    // The holes are zero extents, not data (16 MiB minus the unaligned rims).
    let zero: u64 = m
        .extents
        .iter()
        .filter(|e| e.chunk.is_none())
        .map(|e| e.len)
        .sum();
    assert!(
        (15 * MIB..=16 * MIB).contains(&zero),
        "zero extents cover {zero}"
    );

    let out = dir.path().join("out.raw");
    store
        .export(
            &ManifestName::image("disk"),
            &out,
            ExportFormat::Raw,
            &mut noop(),
        )
        .unwrap();
    assert_eq!(hash_file(&out), hash_file(&src));
    assert_eq!(fs::metadata(&out).unwrap().len(), size);
    // Written sparse: not much more allocated than the data.
    assert!(
        allocated(&out) <= m.data_bytes() + 4 * MIB,
        "{}",
        allocated(&out)
    );
    // The stats add up.
    let s = store.stats().unwrap();
    assert_eq!(s.logical_bytes, size);
    assert_eq!(s.zero_bytes + s.referenced_bytes, size);
    assert_eq!(s.images, 1);
}

#[test]
fn qcow2_round_trip_and_qcow2_export() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    mixed_file(&raw, 2);
    let qcow = dir.path().join("src.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    let store = store_at(&dir.path().join("store"), None);
    let m = store
        .import_file(&ImportRequest::image("q"), &qcow, &mut noop())
        .unwrap();
    assert_eq!(m.format.source_format, "qcow2");
    assert_eq!(m.size, 64 * MIB);
    // No temporary raw file is left behind.
    assert!(dir_entries(&store.root().join("tmp")).is_empty());

    let out_raw = dir.path().join("out.raw");
    store
        .export(
            &ManifestName::image("q"),
            &out_raw,
            ExportFormat::Raw,
            &mut noop(),
        )
        .unwrap();
    assert_eq!(hash_file(&out_raw), hash_file(&raw));

    let out_qcow = dir.path().join("out.qcow2");
    store
        .export(
            &ManifestName::image("q"),
            &out_qcow,
            ExportFormat::Qcow2,
            &mut noop(),
        )
        .unwrap();
    qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        out_qcow.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", out_qcow.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("\"format\": \"qcow2\""));
    // Importing the raw source too stores nothing new: same content, same chunks.
    let before = store.stats().unwrap().stored_bytes;
    store
        .import_file(&ImportRequest::image("r"), &raw, &mut noop())
        .unwrap();
    assert_eq!(store.stats().unwrap().stored_bytes, before);
}

#[test]
fn stream_import_dedups_against_file_import() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("disk.raw");
    mixed_file(&src, 3);
    let store = store_at(&dir.path().join("store"), None);
    let a = store
        .import_file(&ImportRequest::image("file"), &src, &mut noop())
        .unwrap();
    let before = store.stats().unwrap();
    // The same bytes as a stream (holes read as zeros) give the same extents.
    let mut f = File::open(&src).unwrap();
    let b = store
        .import_reader(&ImportRequest::image("stream"), &mut f, &mut noop())
        .unwrap();
    assert_eq!(a.extents, b.extents);
    assert_eq!(b.format.source_format, "stream");
    let after = store.stats().unwrap();
    assert_eq!(after.stored_bytes, before.stored_bytes);
    assert_eq!(after.chunk_count, before.chunk_count);
    assert!(
        (after.dedup_ratio - 2.0).abs() < 1e-9,
        "{}",
        after.dedup_ratio
    );

    // A short stream and an empty stream.
    let m = store
        .import_reader(
            &ImportRequest::image("tiny"),
            &mut Cursor::new(b"hello".to_vec()),
            &mut noop(),
        )
        .unwrap();
    assert_eq!(m.size, 5);
    let m = store
        .import_reader(
            &ImportRequest::image("empty"),
            &mut Cursor::new(Vec::new()),
            &mut noop(),
        )
        .unwrap();
    assert_eq!((m.size, m.extents.len()), (0, 0));
    let out = dir.path().join("tiny.out");
    store
        .export(
            &ManifestName::image("tiny"),
            &out,
            ExportFormat::Raw,
            &mut noop(),
        )
        .unwrap();
    assert_eq!(fs::read(&out).unwrap(), b"hello");
}

/// A second backup of a disk with 1% of its 4 KiB blocks changed at random places
/// stores only the chunks around the changes.
///
/// The bound: a changed block dirties the chunks it overlaps (1.4 on average: a 4 KiB
/// block straddles a cut point with probability ~4 KiB / mean chunk), rarely one more
/// when the change moves a cut point, and random positions land in longer chunks more
/// often (size-biased: E[L^2]/E[L] ~ 1.3x the mean). With 8 KiB average chunks (2..32
/// KiB, mean ~10 KiB) that is ~18 KiB of new data per change: 163 changes in 64 MiB
/// of incompressible data add ~3 MiB, ~4.5% of the disk (measured: 4.5%). The 10%
/// bound leaves room for variance but fails if changes dirtied much more than their
/// neighbourhood (boundaries shifting, rewrites). With the default 1 MiB chunks, 163
/// scattered changes would touch nearly every one of the ~50 chunks, so the test uses
/// small chunks to make the bound meaningful; the assertion that at least the changed
/// bytes were added shows the changes are really stored.
#[test]
fn incremental_backup_stores_only_changed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let src = dir.path().join("disk.raw");
    sparse_file(&src, size, &[(0, size)], 4);
    let store = store_at(&dir.path().join("store"), Some(8 * 1024));
    store
        .import_file(&ImportRequest::backup("vm1", "b1"), &src, &mut noop())
        .unwrap();
    let first = store.stats().unwrap().stored_bytes;
    assert!(first >= size, "random data does not compress");

    let copy = dir.path().join("disk2.raw");
    fs::copy(&src, &copy).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&copy).unwrap();
    let blocks = size / 4096;
    let changes = blocks / 100;
    let mut rng = Rng(99);
    let mut changed = BTreeSet::new();
    while (changed.len() as u64) < changes {
        changed.insert(rng.below(blocks));
    }
    for b in &changed {
        f.write_all_at(&rng.bytes(4096), b * 4096).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);

    store
        .import_file(&ImportRequest::backup("vm1", "b2"), &copy, &mut noop())
        .unwrap();
    let added = store.stats().unwrap().stored_bytes - first;
    let b1 = store.get(&ManifestName::backup("vm1", "b1")).unwrap();
    eprintln!("mean chunk {} bytes", size / b1.extents.len() as u64);
    let changed_bytes = changes * 4096;
    eprintln!(
        "changed {changed_bytes} bytes in {changes} blocks; the backup added {added} bytes ({:.1}%)",
        added as f64 * 100.0 / size as f64
    );
    assert!(added >= changed_bytes, "the changes are stored");
    assert!(added < size / 10, "added {added} of {size}");

    let out = dir.path().join("b2.out");
    store
        .export(
            &ManifestName::backup("vm1", "b2"),
            &out,
            ExportFormat::Raw,
            &mut noop(),
        )
        .unwrap();
    assert_eq!(hash_file(&out), hash_file(&copy));
}

#[test]
fn sparse_gib_with_one_mib_of_data_stores_one_mib() {
    let dir = tempfile::tempdir().unwrap();
    let size = 1024 * MIB;
    let src = dir.path().join("sparse.raw");
    // 1 MiB of random data in four pieces across the disk.
    let pieces = [
        (0, 256 * 1024),
        (100 * MIB, 256 * 1024),
        (512 * MIB + 4096, 256 * 1024),
        (size - 256 * 1024, 256 * 1024),
    ];
    sparse_file(&src, size, &pieces, 5);
    let store = store_at(&dir.path().join("store"), None);
    let t = Instant::now();
    let m = store
        .import_file(&ImportRequest::image("sparse"), &src, &mut noop())
        .unwrap();
    eprintln!("imported a 1 GiB sparse file in {:?}", t.elapsed());
    assert_eq!(m.size, size);
    assert_eq!(m.data_bytes(), MIB);
    let s = store.stats().unwrap();
    assert!(
        (MIB..MIB + 64 * 1024).contains(&s.stored_bytes),
        "stored {} bytes",
        s.stored_bytes
    );
    let out = dir.path().join("out.raw");
    store
        .export(
            &ManifestName::image("sparse"),
            &out,
            ExportFormat::Raw,
            &mut noop(),
        )
        .unwrap();
    assert!(
        allocated(&out) < 8 * MIB,
        "export is sparse: {}",
        allocated(&out)
    );
    assert_eq!(hash_file(&out), hash_file(&src));
}

/// Flips one bit in the stored file of a chunk that only `only` uses.
fn corrupt_a_chunk_of(store: &ImageStore, only: &str, other: &str) -> ChunkId {
    let a = store.get(&ManifestName::image(only)).unwrap().chunk_ids();
    let b = store.get(&ManifestName::image(other)).unwrap().chunk_ids();
    let id = *a.difference(&b).next().expect("a chunk of its own");
    let path = store.chunk_path(&id);
    let mut bytes = fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x10;
    fs::write(&path, bytes).unwrap();
    id
}

#[test]
fn verify_finds_flipped_bit_and_names_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("store"), Some(64 * 1024));
    let mut rng = Rng(6);
    let shared = rng.bytes(2 << 20);
    let mut a = shared.clone();
    a.extend(rng.bytes(2 << 20));
    let mut b = shared;
    b.extend(rng.bytes(2 << 20));
    store
        .import_reader(&ImportRequest::image("a"), &mut Cursor::new(a), &mut noop())
        .unwrap();
    store
        .import_reader(&ImportRequest::image("b"), &mut Cursor::new(b), &mut noop())
        .unwrap();
    let clean = store.verify(&mut noop()).unwrap();
    assert!(clean.is_ok(), "{clean:?}");
    assert!(clean.chunks_checked > 10);

    store.verify_manifest(&ManifestName::image("a")).unwrap();
    let id = corrupt_a_chunk_of(&store, "a", "b");
    let report = store.verify(&mut noop()).unwrap();
    assert!(!report.is_ok());
    // Checking one image finds it too; the other image is intact.
    match store.verify_manifest(&ManifestName::image("a")) {
        Err(ImageError::Corrupt {
            chunk, affected, ..
        }) => {
            assert_eq!(chunk, id);
            assert_eq!(affected, vec![ManifestName::image("a")]);
        }
        r => panic!("expected Corrupt, got {r:?}"),
    }
    store.verify_manifest(&ManifestName::image("b")).unwrap();
    assert_eq!(report.corrupt_chunks.len(), 1, "{report:?}");
    assert_eq!(report.corrupt_chunks[0].chunk, id);
    assert_eq!(
        report.corrupt_chunks[0].referenced_by,
        vec![ManifestName::image("a")]
    );

    // A missing chunk is reported with its users too.
    let shared_id = *store
        .get(&ManifestName::image("a"))
        .unwrap()
        .chunk_ids()
        .intersection(&store.get(&ManifestName::image("b")).unwrap().chunk_ids())
        .next()
        .unwrap();
    fs::remove_file(store.chunk_path(&shared_id)).unwrap();
    let report = store.verify(&mut noop()).unwrap();
    assert!(matches!(
        store.verify_manifest(&ManifestName::image("b")),
        Err(ImageError::MissingChunks { .. })
    ));
    assert_eq!(report.missing_chunks.len(), 1);
    assert_eq!(
        report.missing_chunks[0].referenced_by,
        vec![ManifestName::image("a"), ManifestName::image("b")]
    );
}

#[test]
fn export_of_corrupt_image_fails_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("store"), Some(64 * 1024));
    let mut rng = Rng(7);
    store
        .import_reader(
            &ImportRequest::image("a"),
            &mut Cursor::new(rng.bytes(4 << 20)),
            &mut noop(),
        )
        .unwrap();
    store
        .import_reader(
            &ImportRequest::image("b"),
            &mut Cursor::new(rng.bytes(1 << 20)),
            &mut noop(),
        )
        .unwrap();
    let id = corrupt_a_chunk_of(&store, "a", "b");
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    for format in [ExportFormat::Raw, ExportFormat::Qcow2] {
        let out = out_dir.join("a.img");
        let err = store
            .export(&ManifestName::image("a"), &out, format, &mut noop())
            .unwrap_err();
        match &err {
            ImageError::Corrupt {
                chunk, affected, ..
            } => {
                assert_eq!(*chunk, id);
                assert_eq!(affected, &vec![ManifestName::image("a")]);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(err.to_string().contains("image a"), "{err}");
        assert!(
            dir_entries(&out_dir).is_empty(),
            "{:?}",
            dir_entries(&out_dir)
        );
        assert!(dir_entries(&store.root().join("tmp")).is_empty());
    }
    // The intact image still exports; an existing destination is refused.
    let out = out_dir.join("b.img");
    store
        .export(
            &ManifestName::image("b"),
            &out,
            ExportFormat::Raw,
            &mut noop(),
        )
        .unwrap();
    let err = store
        .export(
            &ManifestName::image("b"),
            &out,
            ExportFormat::Raw,
            &mut noop(),
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::AlreadyExists { .. }), "{err:?}");
}

#[test]
fn gc_removes_exactly_the_unreferenced_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = store_at(&root, Some(64 * 1024));
    let mut rng = Rng(8);
    let shared = rng.bytes(3 << 20);
    let mut a = shared.clone();
    a.extend(rng.bytes(2 << 20));
    let mut b = shared;
    b.extend(rng.bytes(2 << 20));
    let ma = store
        .import_reader(&ImportRequest::image("a"), &mut Cursor::new(a), &mut noop())
        .unwrap();
    let mb = store
        .import_reader(
            &ImportRequest::image("b"),
            &mut Cursor::new(b.clone()),
            &mut noop(),
        )
        .unwrap();
    let (ca, cb) = (ma.chunk_ids(), mb.chunk_ids());
    assert!(ca.intersection(&cb).count() > 5, "the images share chunks");
    // Nothing to collect yet.
    assert_eq!(store.gc().unwrap().removed_chunks, 0);
    // Leftovers of interrupted writes: not chunks, not stray, removed by gc.
    fs::write(root.join("tmp").join("w.1.2.3"), b"partial").unwrap();
    fs::write(
        root.join("chunks").join("00").join(".tmp.1.2.3"),
        b"partial",
    )
    .unwrap();
    let report = store.verify(&mut noop()).unwrap();
    assert!(
        report.is_ok() && report.stray_files.is_empty(),
        "{report:?}"
    );

    store.delete(&ManifestName::image("a")).unwrap();
    let report = store.gc().unwrap();
    let only_a: BTreeSet<_> = ca.difference(&cb).collect();
    assert_eq!(report.removed_chunks, only_a.len() as u64);
    assert_eq!(report.kept_chunks, cb.len() as u64);
    assert_eq!(report.removed_tmp_files, 2);
    let on_disk: BTreeSet<String> = chunk_files(&root).into_iter().map(|(n, _)| n).collect();
    let expected: BTreeSet<String> = cb.iter().map(|c| c.to_hex()).collect();
    assert_eq!(on_disk, expected);
    let out = dir.path().join("b.out");
    store
        .export(
            &ManifestName::image("b"),
            &out,
            ExportFormat::Raw,
            &mut noop(),
        )
        .unwrap();
    assert_eq!(fs::read(&out).unwrap(), b);
    assert!(store.verify(&mut noop()).unwrap().is_ok());
    // Deleting the last image frees everything.
    store.delete(&ManifestName::image("b")).unwrap();
    store.gc().unwrap();
    assert!(chunk_files(&root).is_empty());
    assert!(matches!(
        store.delete(&ManifestName::image("b")),
        Err(ImageError::NotFound { .. })
    ));
}

#[test]
fn gc_refuses_while_a_manifest_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("store"), Some(64 * 1024));
    store
        .import_reader(
            &ImportRequest::image("a"),
            &mut Cursor::new(Rng(9).bytes(1 << 20)),
            &mut noop(),
        )
        .unwrap();
    let path = store.manifest_path(&ManifestName::image("a"));
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replacen("\"len\": ", "\"len\": 1", 1)).unwrap();
    let before = chunk_files(store.root()).len();
    assert!(matches!(
        store.gc(),
        Err(ImageError::ManifestCorrupt { .. })
    ));
    assert_eq!(chunk_files(store.root()).len(), before);
}

#[test]
fn gc_running_during_imports_never_breaks_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("store"), Some(64 * 1024));
    std::thread::scope(|s| {
        let store = &store;
        let importer = s.spawn(move || {
            for i in 0..6u64 {
                let data = Rng(100 + i).bytes(3 << 20);
                store
                    .import_reader(
                        &ImportRequest::image(format!("i{i}")),
                        &mut Cursor::new(data),
                        &mut noop(),
                    )
                    .unwrap();
            }
        });
        while !importer.is_finished() {
            store.gc().unwrap();
        }
        importer.join().unwrap();
    });
    store.gc().unwrap();
    let report = store.verify(&mut noop()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(store.list(Some(Kind::Image)).unwrap().len(), 6);
}

/// The child half of `crash_during_import_leaves_the_store_consistent`: imports a
/// long stream into the store named by the environment until it is killed.
#[test]
fn crash_child() {
    let Ok(root) = std::env::var("NIMBUS_IMAGE_CRASH_CHILD") else {
        return;
    };
    let store = store_at(Path::new(&root), Some(64 * 1024));
    let mut reader = GenReader::new(42, CRASH_STREAM);
    store
        .import_reader(&ImportRequest::image("big"), &mut reader, &mut noop())
        .unwrap();
}

const CRASH_STREAM: u64 = 192 * MIB;

#[test]
fn crash_during_import_leaves_the_store_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = store_at(&root, Some(64 * 1024));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("NIMBUS_IMAGE_CRASH_CHILD", &root)
        .spawn()
        .unwrap();
    // Kill it (SIGKILL) once it has stored a good part of the stream.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = chunk_files(&root).len();
        if n >= 300 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child ended ({status}) before it was killed, with {n} chunks");
        }
        assert!(Instant::now() < deadline, "the child is too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let survivors = chunk_files(&root).len();
    let leftovers = tmp_files_in_chunk_dirs(&root).len() + dir_entries(&root.join("tmp")).len();
    eprintln!("killed with {survivors} chunks stored and {leftovers} temporary files");
    assert!(
        store.list(None).unwrap().is_empty(),
        "no manifest without its chunks"
    );
    let report = store.verify(&mut noop()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.chunks_checked as usize, survivors);

    // Running the import again completes, reusing what the child stored.
    let m = store
        .import_reader(
            &ImportRequest::image("big"),
            &mut GenReader::new(42, CRASH_STREAM),
            &mut noop(),
        )
        .unwrap();
    let total = m.chunk_ids().len();
    assert!(
        survivors < total,
        "killed mid-import: {survivors} of {total}"
    );
    assert_eq!(
        chunk_files(&root).len(),
        total,
        "the chunks of the first run were reused"
    );
    let out = dir.path().join("big.out");
    store
        .export(
            &ManifestName::image("big"),
            &out,
            ExportFormat::Raw,
            &mut noop(),
        )
        .unwrap();
    assert_eq!(
        hash_file(&out),
        hash_reader(&mut GenReader::new(42, CRASH_STREAM))
    );
    assert!(store.verify(&mut noop()).unwrap().is_ok());
    let gc = store.gc().unwrap();
    assert_eq!(gc.removed_chunks, 0);
    assert_eq!(gc.removed_tmp_files as usize, leftovers);
    assert!(dir_entries(&root.join("tmp")).is_empty());
    assert!(tmp_files_in_chunk_dirs(&root).is_empty());
}

#[test]
fn replication_copies_only_missing_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let src = store_at(&dir.path().join("src"), Some(64 * 1024));
    let dst = store_at(&dir.path().join("dst"), Some(64 * 1024));
    let mut rng = Rng(10);
    let base = rng.bytes(4 << 20);
    let mut v2 = base.clone();
    v2.extend(rng.bytes(1 << 20));
    src.import_reader(
        &ImportRequest::image("v1"),
        &mut Cursor::new(base),
        &mut noop(),
    )
    .unwrap();
    src.import_reader(
        &ImportRequest::backup("vm", "b1").with_meta(serde_json::json!({"cpu": 0.5})),
        &mut Cursor::new(v2.clone()),
        &mut noop(),
    )
    .unwrap();

    let replicate = |name: &ManifestName| -> (usize, u64) {
        let m = src.get(name).unwrap();
        let _lease = dst.lease().unwrap();
        let missing = dst.missing_chunks(&m).unwrap();
        let mut bytes = 0;
        for id in &missing {
            let data = src.read_chunk_compressed(id).unwrap();
            bytes += data.len() as u64;
            assert!(dst.put_chunk_compressed(id, &data).unwrap());
        }
        dst.put_manifest(&m).unwrap();
        (missing.len(), bytes)
    };
    let v1 = src.get(&ManifestName::image("v1")).unwrap();
    let b1 = src.get(&ManifestName::backup("vm", "b1")).unwrap();
    let (n1, _) = replicate(&ManifestName::image("v1"));
    assert_eq!(n1, v1.chunk_ids().len());
    let (n2, bytes2) = replicate(&ManifestName::backup("vm", "b1"));
    let new_in_b1 = b1.chunk_ids().difference(&v1.chunk_ids()).count();
    assert_eq!(n2, new_in_b1, "only the chunks the destination lacked");
    assert!(
        bytes2 < 2 << 20,
        "copied {bytes2} bytes for ~1 MiB of new data"
    );
    assert_eq!(dst.get(&ManifestName::backup("vm", "b1")).unwrap(), b1);
    let out = dir.path().join("b1.out");
    dst.export(
        &ManifestName::backup("vm", "b1"),
        &out,
        ExportFormat::Raw,
        &mut noop(),
    )
    .unwrap();
    assert_eq!(fs::read(&out).unwrap(), v2);
    assert_eq!(dst.missing_chunks(&b1).unwrap(), vec![]);

    // A manifest whose chunks are missing is refused; so is a tampered chunk.
    let other = store_at(&dir.path().join("other"), Some(64 * 1024));
    match other.put_manifest(&b1) {
        Err(ImageError::MissingChunks { chunks, .. }) => {
            assert_eq!(chunks.len(), b1.chunk_ids().len())
        }
        r => panic!("expected MissingChunks, got {r:?}"),
    }
    let id = *b1.chunk_ids().iter().next().unwrap();
    let mut data = src.read_chunk_compressed(&id).unwrap();
    let last = data.len() - 1;
    data[last] ^= 1;
    assert!(matches!(
        other.put_chunk_compressed(&id, &data),
        Err(ImageError::Corrupt { .. })
    ));
    assert!(!other.has_chunk(&id).unwrap());
    assert!(matches!(
        dst.put_manifest(&b1),
        Err(ImageError::AlreadyExists { .. })
    ));
}

#[test]
fn corrupt_manifest_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("store"), Some(64 * 1024));
    let name = ManifestName::image("m");
    store
        .import_reader(
            &ImportRequest::image("m"),
            &mut Cursor::new(Rng(11).bytes(1 << 20)),
            &mut noop(),
        )
        .unwrap();
    let path = store.manifest_path(&name);
    let good = fs::read_to_string(&path).unwrap();

    // One changed digit in the body.
    let bad = good.replacen("\"size\": 1048576", "\"size\": 1048577", 1);
    assert_ne!(bad, good);
    fs::write(&path, &bad).unwrap();
    match store.get(&name) {
        Err(ImageError::ManifestCorrupt { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("checksum"), "{reason}");
        }
        r => panic!("expected ManifestCorrupt, got {r:?}"),
    }
    // Truncated.
    fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert!(matches!(
        store.get(&name),
        Err(ImageError::ManifestCorrupt { .. })
    ));
    let report = store.verify(&mut noop()).unwrap();
    assert_eq!(report.corrupt_manifests.len(), 1);
    assert_eq!(report.corrupt_manifests[0].path, path);
    assert!(matches!(
        store.export(&name, &dir.path().join("x"), ExportFormat::Raw, &mut noop()),
        Err(ImageError::ManifestCorrupt { .. })
    ));
    // A valid manifest under another name is caught too.
    fs::write(&path, &good).unwrap();
    fs::copy(&path, store.manifest_path(&ManifestName::image("renamed"))).unwrap();
    let err = store.get(&ManifestName::image("renamed")).unwrap_err();
    assert!(err.to_string().contains("describes image m"), "{err}");
}

#[test]
fn not_an_image_and_unsupported_formats_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("store"), None);
    let raw = dir.path().join("src.raw");
    sparse_file(&raw, 8 * MIB, &[(0, 8 * MIB)], 12);
    let qcow = dir.path().join("real.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);

    // The first 100 KiB of a real qcow2: a valid header, the data cut off.
    let truncated = dir.path().join("truncated.qcow2");
    fs::write(&truncated, &fs::read(&qcow).unwrap()[..100 * 1024]).unwrap();
    let err = store
        .import_file(&ImportRequest::image("t"), &truncated, &mut noop())
        .unwrap_err();
    match &err {
        ImageError::NotAnImage { path, reason } => {
            assert_eq!(path, &truncated);
            assert!(reason.contains("check"), "{reason}");
        }
        other => panic!("expected NotAnImage, got {other:?}"),
    }
    eprintln!("{err}");

    // A text file named .qcow2.
    let text = dir.path().join("notes.qcow2");
    fs::write(&text, "these are not the sectors you are looking for\n").unwrap();
    let err = store
        .import_file(&ImportRequest::image("t"), &text, &mut noop())
        .unwrap_err();
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err:?}");
    assert!(err.to_string().contains(".qcow2"), "{err}");

    // Something qemu-img cannot open at all.
    let err = store
        .import_file(&ImportRequest::image("t"), dir.path(), &mut noop())
        .unwrap_err();
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err:?}");

    // A real image in another format.
    let vdi = dir.path().join("disk.vdi");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vdi",
        raw.to_str().unwrap(),
        vdi.to_str().unwrap(),
    ]);
    match store.import_file(&ImportRequest::image("t"), &vdi, &mut noop()) {
        Err(ImageError::UnsupportedFormat { format, .. }) => assert_eq!(format, "vdi"),
        r => panic!("expected UnsupportedFormat, got {r:?}"),
    }
    // A qcow2 with a backing file would read host files: refused.
    let overlay = dir.path().join("overlay.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        qcow.to_str().unwrap(),
        overlay.to_str().unwrap(),
    ]);
    let err = store
        .import_file(&ImportRequest::image("t"), &overlay, &mut noop())
        .unwrap_err();
    assert!(err.to_string().contains("backing file"), "{err}");
    // A missing file.
    assert!(matches!(
        store.import_file(
            &ImportRequest::image("t"),
            &dir.path().join("nope.raw"),
            &mut noop()
        ),
        Err(ImageError::NotFound { .. })
    ));
    assert!(store.list(None).unwrap().is_empty());
    assert!(dir_entries(&store.root().join("tmp")).is_empty());
}

#[test]
fn names_overwrite_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("store"), Some(64 * 1024));
    let data = || Cursor::new(Rng(13).bytes(256 * 1024));
    store
        .import_reader(&ImportRequest::image("x"), &mut data(), &mut noop())
        .unwrap();
    assert!(matches!(
        store.import_reader(&ImportRequest::image("x"), &mut data(), &mut noop()),
        Err(ImageError::AlreadyExists { .. })
    ));
    store
        .import_reader(
            &ImportRequest::image("x").overwrite(true),
            &mut data(),
            &mut noop(),
        )
        .unwrap();
    for bad in ["../x", "a b", ""] {
        assert!(matches!(
            store.import_reader(&ImportRequest::image(bad), &mut data(), &mut noop()),
            Err(ImageError::Invalid { .. })
        ));
    }
    assert!(matches!(
        store.get(&ManifestName::image("y")),
        Err(ImageError::NotFound { .. })
    ));

    for i in 0..5 {
        let spec = serde_json::json!({"name": "web", "cpu": 0.5, "n": i});
        let m = store
            .import_reader(
                &ImportRequest::backup("web", format!("b{i}")).with_meta(spec.clone()),
                &mut data(),
                &mut noop(),
            )
            .unwrap();
        assert_eq!(m.meta, Some(spec));
        std::thread::sleep(Duration::from_millis(2));
    }
    store
        .import_reader(&ImportRequest::backup("db", "b0"), &mut data(), &mut noop())
        .unwrap();
    let deleted = store.prune("web", 2).unwrap();
    assert_eq!(
        deleted,
        (0..3)
            .map(|i| ManifestName::backup("web", format!("b{i}")))
            .collect::<Vec<_>>()
    );
    let left: Vec<String> = store
        .backups_of("web")
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(left, vec!["b3", "b4"]);
    assert_eq!(store.list(Some(Kind::Backup)).unwrap().len(), 3);
    assert_eq!(store.list(Some(Kind::Image)).unwrap().len(), 1);
    assert_eq!(store.prune("web", 0).unwrap().len(), 2);
    assert!(store.prune("nobody", 1).unwrap().is_empty());
    let s = store.stats().unwrap();
    assert_eq!((s.images, s.backups), (1, 1));
}

#[test]
fn disk_full_is_reported_and_temporary_files_removed() {
    // Needs a small file system: a 24 MiB tmpfs (root only; skipped otherwise).
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=24m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let store = store_at(&mnt.join("store"), Some(64 * 1024));
    let err = store
        .import_reader(
            &ImportRequest::image("big"),
            &mut GenReader::new(1, 64 * MIB),
            &mut noop(),
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::DiskFull { .. }), "{err:?}");
    assert!(dir_entries(&mnt.join("store").join("tmp")).is_empty());
    assert!(store.list(None).unwrap().is_empty());
    // gc frees the orphaned chunks, after which a small import fits.
    store.gc().unwrap();
    store
        .import_reader(
            &ImportRequest::image("small"),
            &mut GenReader::new(2, 4 * MIB),
            &mut noop(),
        )
        .unwrap();
    // An export that does not fit either: no partial file is left.
    let out = mnt.join("out.raw");
    let mut f = File::create(mnt.join("filler")).unwrap();
    let chunk = vec![1u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    let err = store
        .export(
            &ManifestName::image("small"),
            &out,
            ExportFormat::Raw,
            &mut noop(),
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::DiskFull { .. }), "{err:?}");
    assert_eq!(dir_entries(&mnt), vec!["filler", "store"]);
}
