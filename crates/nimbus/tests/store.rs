//! End-to-end: disk images and backups in the chunk store, through the real binary:
//! import/export round trips, dedup, backup of a running VM restored and booted,
//! corruption caught by verify and refused by restore, prune and gc.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A raw disk with an MBR signature, random blocks and holes.
fn make_disk(path: &std::path::Path, mib: u64, seed: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(mib * 1024 * 1024).unwrap();
    let mut x = seed | 1;
    let mut block = vec![0u8; 64 * 1024];
    for i in 0..(mib * 16) {
        if i % 3 == 0 {
            continue; // a hole
        }
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(i * 64 * 1024)).unwrap();
        f.write_all(&block).unwrap();
    }
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(510)).unwrap();
    f.write_all(&[0x55, 0xaa]).unwrap();
}

fn sha(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn stats(c: &TestCluster) -> Value {
    c.cli_json(&["store", "stats"])
}

#[test]
fn disk_images_round_trip_and_dedup_in_the_chunk_store() {
    let c = TestCluster::up("t-store", &[]);
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    make_disk(&raw, 24, 7);
    let qcow = dir.path().join("disk.qcow2");
    assert!(std::process::Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .unwrap()
        .success());

    c.cli_ok(&["image", "import", "d1", qcow.to_str().unwrap()]);
    let s1 = stats(&c);
    assert_eq!(s1["images"], 1);
    assert_eq!(s1["logical_bytes"], 24 * 1024 * 1024);

    // Export raw: byte-identical to the source; qcow2: same content per qemu-img.
    let back = dir.path().join("back.raw");
    assert!(c
        .cli(&["image", "export", "d1", back.to_str().unwrap()])
        .status
        .success());
    assert_eq!(sha(&back), sha(&raw));
    let back_q = dir.path().join("back.qcow2");
    assert!(c
        .cli(&["image", "export", "d1", back_q.to_str().unwrap()])
        .status
        .success());
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(&raw)
        .arg(&back_q)
        .status()
        .unwrap();
    assert!(cmp.success(), "qcow2 export differs from the source");

    // The same content under another name costs (almost) nothing more.
    assert!(c
        .cli(&["image", "import", "d2", raw.to_str().unwrap()])
        .status
        .success());
    let s2 = stats(&c);
    assert_eq!(s2["images"], 2);
    assert_eq!(
        s2["unique_bytes"], s1["unique_bytes"],
        "identical content is stored once"
    );
    assert!(s2["stored_bytes"].as_u64().unwrap() <= s1["stored_bytes"].as_u64().unwrap() + 4096);

    // Deleting one keeps the shared chunks; gc removes nothing still referenced.
    assert!(c.cli(&["image", "delete", "d2"]).status.success());
    let gc = c.cli_json(&["store", "gc"]);
    assert_eq!(gc["removed_chunks"], 0);
    assert!(c.cli(&["store", "verify"]).status.success());
    let again = dir.path().join("again.raw");
    assert!(c
        .cli(&["image", "export", "d1", again.to_str().unwrap()])
        .status
        .success());
    assert_eq!(sha(&again), sha(&raw));

    // A flipped bit in a chunk file: verify names the image, export refuses.
    let chunk = walk_files(&c.data_dir().join("server/store/chunks"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a chunk file");
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&chunk, bytes).unwrap();
    let out = c.cli(&["store", "verify"]);
    assert!(!out.status.success(), "verify must fail on a corrupt chunk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("d1"),
        "verify must name the affected image: {text}"
    );
    let bad = dir.path().join("bad.raw");
    let out = c.cli(&["image", "export", "d1", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!bad.exists(), "no half-written export");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn backup_of_a_running_vm_restores_and_boots_with_its_data() {
    let c = TestCluster::up("t-backup", &[]);
    assert!(c.cli(&["image", "build", "tiny"]).status.success());
    let dir = tempfile::tempdir().unwrap();
    let ud = disk_marker_user_data(dir.path());
    c.cli_ok(&tiny_vm("db", "32Mi", &ud, &["--port", "80"]));
    let db = wait_ready(&c, "db");
    let marker = fetch(&c, &db, "/disk.txt");
    assert!(marker.starts_with("persisted-"), "{marker:?}");

    // Backup while running (paused for the copy), then again: the second adds little.
    let b1 = c.cli_json(&["backup", "create", "db", "--name", "one"]);
    assert_eq!(b1["state"], "done", "{b1}");
    assert_eq!(b1["consistency"], "paused");
    assert_eq!(
        c.instance("db")["state"],
        "running",
        "the VM runs again after the backup"
    );
    let b2 = c.cli_json(&["backup", "create", "db", "--name", "two"]);
    assert_eq!(b2["state"], "done");
    assert!(
        b2["new_bytes"].as_u64().unwrap() <= b1["new_bytes"].as_u64().unwrap() / 2 + 65536,
        "an unchanged disk must not be stored twice: {b1} {b2}"
    );
    let list = c.cli_json(&["backup", "list", "db"]);
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Restore as a new instance: it boots with the data of the backup.
    let r = c.cli(&["backup", "restore", "db@one", "--as", "db2"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let db2 = wait_ready(&c, "db2");
    assert_eq!(
        fetch(&c, &db2, "/disk.txt"),
        marker,
        "restored disk has the backed-up data"
    );

    // Bad input: unknown backup, existing name.
    let out = c.cli(&["backup", "restore", "db@nope", "--as", "db3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = c.cli(&["backup", "restore", "db@one", "--as", "db2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));

    // Prune keeps the newest.
    let pruned = c.cli_json(&["backup", "prune", "db", "--keep-last", "1"]);
    assert_eq!(pruned.as_array().unwrap().len(), 1);
    let list = c.cli_json(&["backup", "list", "db"]);
    assert_eq!(list[0]["name"], "two");
}

/// User-data whose first boot writes a random marker to the data disk; every boot
/// serves what the disk holds at /disk.txt.
fn disk_marker_user_data(dir: &std::path::Path) -> std::path::PathBuf {
    let ud = dir.join("disk.sh");
    std::fs::write(
        &ud,
        "#!/bin/sh\n\
         if ! dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | grep -q persisted; then\n\
           echo \"persisted-$RANDOM-$RANDOM\" | dd of=/dev/vda bs=512 seek=1 conv=fsync 2>/dev/null\n\
         fi\n\
         dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | tr -d '\\000' > /www/disk.txt\n",
    )
    .unwrap();
    ud
}

fn wait_ready(c: &TestCluster, name: &str) -> Value {
    c.wait_for(&format!("{name} to boot"), Duration::from_secs(120), || {
        let (code, v) = c.http("GET", &format!("/v1/instances/{name}"), None);
        (code == 200 && v["guest_ready"] == true).then_some(v)
    })
}

fn fetch(c: &TestCluster, inst: &Value, path: &str) -> String {
    let ep = inst["endpoints"][0].as_str().unwrap();
    let port: u16 = ep.split("->").next().unwrap().parse().unwrap();
    c.wait_for(
        &format!("{path} from the guest"),
        Duration::from_secs(30),
        || {
            ureq::get(&format!("http://127.0.0.1:{port}{path}"))
                .timeout(Duration::from_secs(3))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        },
    )
}

#[test]
fn replicate_copies_only_the_chunks_a_node_lacks() {
    let mut c = TestCluster::up("t-repl-a", &[]);
    c.add_agent("t-repl-b", &["--sim"]);
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("base.raw");
    make_disk(&raw, 16, 11);
    assert!(c
        .cli(&["image", "import", "base", raw.to_str().unwrap()])
        .status
        .success());
    // A second image sharing most content: changed in one region only.
    let raw2 = dir.path().join("next.raw");
    std::fs::copy(&raw, &raw2).unwrap();
    {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new().write(true).open(&raw2).unwrap();
        f.seek(SeekFrom::Start(8 * 1024 * 1024)).unwrap();
        f.write_all(&vec![0x5a; 256 * 1024]).unwrap();
    }
    assert!(c
        .cli(&["image", "import", "next", raw2.to_str().unwrap()])
        .status
        .success());

    let copied = |image: &str| -> (u64, u64) {
        c.cli_ok(&["image", "replicate", image, "--to", "t-repl-b"]);
        let ev = c.wait_for(
            &format!("{image} to reach t-repl-b"),
            Duration::from_secs(60),
            || {
                let (_, v) = c.http("GET", "/v1/events?limit=1000", None);
                v["items"].as_array().and_then(|items| {
                    items
                        .iter()
                        .rev()
                        .find(|e| e["kind"] == "image_replicated" && e["object"] == image)
                        .cloned()
                })
            },
        );
        // "to node t-repl-b: N chunks, M bytes sent"
        let msg = ev["message"].as_str().unwrap().to_string();
        let nums: Vec<u64> = msg
            .split(|ch: char| !ch.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        (nums[nums.len() - 2], nums[nums.len() - 1])
    };
    let (base_chunks, base_bytes) = copied("base");
    assert!(base_chunks > 4, "the first copy moves the image's chunks");
    let (next_chunks, next_bytes) = copied("next");
    assert!(next_chunks >= 1, "the changed region must be sent");
    assert!(
        next_chunks * 3 < base_chunks && next_bytes * 3 < base_bytes,
        "only missing chunks move: base {base_chunks} chunks/{base_bytes} B, next {next_chunks}/{next_bytes}"
    );
}

#[test]
fn backup_of_a_running_process_restores_its_data_dir_on_another_node() {
    let mut c = TestCluster::up("t-pbak-a", &[]);
    c.add_agent("t-pbak-b", &[]);
    // First start writes a file into the data directory (the working directory);
    // a start that finds it says so. A ticker keeps writing while backups run.
    let script = "if [ -f data.txt ]; then echo \"found $(cat data.txt)\"; \
                  else echo \"made-$$\" > data.txt; mkdir -p sub; echo deep > sub/f; \
                  echo made; fi; \
                  while true; do date +%s%N >> ticks; sleep 0.02; done";
    c.cli_ok(&[
        "instance",
        "create",
        "app",
        "--memory",
        "32Mi",
        "--node-selector",
        "nimbus/node=t-pbak-a",
        "--",
        "sh",
        "-c",
        script,
    ]);
    c.wait_state("app", "running");
    c.wait_for("the data file", Duration::from_secs(15), || {
        let out = c.cli(&["instance", "logs", "app"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("made")
            .then_some(())
    });
    let b = c.cli_json(&["backup", "create", "app", "--name", "one"]);
    assert_eq!(b["state"], "done", "{b}");
    assert_eq!(
        b["consistency"], "frozen",
        "a running process is frozen for the copy"
    );
    let app = c.instance("app");
    assert_eq!(app["state"], "running", "{app}");

    // The process was thawed: its ticker still runs after the backup.
    let cg = memory_cgroup_of(app["pid"].as_u64().unwrap());
    let freezer = cg.to_str().unwrap().replace("/memory/", "/freezer/");
    if let Ok(state) = std::fs::read_to_string(format!("{freezer}/freezer.state")) {
        assert_eq!(state.trim(), "THAWED");
    }

    // Restore on the other node: the copy finds the file the original made.
    let r = c.cli(&[
        "backup", "restore", "app@one", "--as", "copy", "--node", "t-pbak-b",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let copy = c.wait_state("copy", "running");
    assert_eq!(copy["node"], "t-pbak-b");
    let found = c.wait_for("the restored file", Duration::from_secs(15), || {
        let out = c.cli(&["instance", "logs", "copy"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find(|l| l.starts_with("found made-"))
            .map(String::from)
    });
    let restored_dir = c.dir.path().join("agent-t-pbak-b/instances/copy/data");
    assert_eq!(
        std::fs::read_to_string(restored_dir.join("sub/f")).unwrap(),
        "deep\n",
        "nested files are restored ({found})"
    );
    let images = c.cli_json(&["image", "list"]);
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "copy-restored" && i["kind"] == "archive"),
        "{images}"
    );

    // A stopped process keeps no data directory: nothing to back up.
    assert!(c.cli(&["instance", "stop", "app"]).status.success());
    c.wait_state("app", "stopped");
    let out = c.cli(&["backup", "create", "app"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no data directory"), "{err}");
    // An archive cannot boot a VM.
    let out = c.cli(&[
        "instance",
        "create",
        "v",
        "--vm",
        "--image",
        "copy-restored",
        "--memory",
        "64Mi",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("archive"));
}

/// The guest's `tick BOOT_ID N DISK_MARKER` lines: its boot, a counter, and what it
/// read from its disk with the page cache dropped.
fn ticks(c: &TestCluster, name: &str) -> Vec<(String, u64, String)> {
    let out = c.cli(&["instance", "logs", name]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.trim().strip_prefix("tick ")?.split(' ');
            let boot = w.next()?.to_string();
            let n = w.next()?.parse().ok()?;
            Some((boot, n, w.next().unwrap_or("").to_string()))
        })
        .collect()
}

#[test]
fn draining_a_node_live_migrates_a_running_vm_without_a_reboot() {
    let mut c = TestCluster::up("t-live-a", &[]);
    assert!(c.cli(&["image", "build", "tiny"]).status.success());
    let dir = tempfile::tempdir().unwrap();
    let ud = dir.path().join("ticks.sh");
    std::fs::write(
        &ud,
        "#!/bin/sh\n\
         echo \"persisted-$RANDOM-$RANDOM\" | dd of=/dev/vda bs=512 seek=1 conv=fsync 2>/dev/null\n\
         boot=$(cat /proc/sys/kernel/random/boot_id)\n\
         n=0\n\
         while true; do\n\
           n=$((n+1))\n\
           echo 3 > /proc/sys/vm/drop_caches\n\
           disk=$(dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | tr -d '\\000')\n\
           echo \"tick $boot $n $disk\"\n\
           sleep 0.3\n\
         done\n",
    )
    .unwrap();
    c.cli_ok(&tiny_vm("live", "16Mi", &ud, &["--port", "80"]));
    let vm = wait_ready(&c, "live");
    assert_eq!(vm["node"], "t-live-a");
    let (boot, before, marker) = c.wait_for("the guest's ticks", Duration::from_secs(60), || {
        ticks(&c, "live")
            .pop()
            .filter(|t| t.2.starts_with("persisted-"))
    });
    c.add_agent("t-live-b", &[]);

    c.cli_ok(&["node", "drain", "t-live-a", "--timeout", "240"]);
    let moved = c.wait_for(
        "the guest ready on t-live-b",
        Duration::from_secs(60),
        || {
            let v = c.instance("live");
            let console = c
                .dir
                .path()
                .join("agent-t-live-b/instances/live/output.log");
            assert!(
                v["state"] == "running",
                "{v}\nconsole on t-live-b:\n{}\n{}",
                std::fs::read_to_string(console).unwrap_or_default(),
                c.logs()
            );
            (v["guest_ready"] == true).then_some(v)
        },
    );
    assert_eq!(moved["node"], "t-live-b", "{moved}");
    // The same boot goes on counting on the new node, and reads the same disk there.
    let after = c.wait_for("ticks on the new node", Duration::from_secs(30), || {
        let t = ticks(&c, "live");
        (t.len() >= 3).then_some(t)
    });
    for (b, n, disk) in &after {
        assert_eq!(b, &boot, "the guest did not reboot: {after:?}");
        assert!(*n > before, "the counter went on from {before}: {after:?}");
        assert_eq!(disk, &marker, "the disk came along: {after:?}");
    }
    let console = String::from_utf8_lossy(&c.cli(&["instance", "logs", "live"]).stdout).to_string();
    assert!(
        !console.contains("nimbus-guest-ready"),
        "no boot on the new node: {console}"
    );
    let (_, events) = c.http("GET", "/v1/events?limit=1000", None);
    let moved_event = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "instance_moved" && e["object"] == "live")
        .unwrap_or_else(|| panic!("{events}"));
    let msg = moved_event["message"].as_str().unwrap();
    assert!(
        msg.contains("live-migrated from t-live-a to t-live-b") && msg.contains("QEMU downtime"),
        "{msg}"
    );
    // One QEMU for it: the source's paused copy quit.
    c.wait_for("the source's QEMU to quit", Duration::from_secs(30), || {
        (qemu_processes("live") == 1).then_some(())
    });
    let (_, node) = c.http("GET", "/v1/nodes/t-live-a", None);
    assert_eq!(node["state"], "draining");
    assert_eq!(node["instances"], 0);
}

#[test]
fn an_offline_drain_moves_a_vm_by_backup_with_its_disk() {
    let mut c = TestCluster::up("t-vdrain-a", &[]);
    assert!(c.cli(&["image", "build", "tiny"]).status.success());
    let dir = tempfile::tempdir().unwrap();
    let ud = disk_marker_user_data(dir.path());
    c.cli_ok(&tiny_vm("vm", "16Mi", &ud, &["--port", "80"]));
    let vm = wait_ready(&c, "vm");
    assert_eq!(vm["node"], "t-vdrain-a");
    let marker = fetch(&c, &vm, "/disk.txt");
    c.add_agent("t-vdrain-b", &[]);

    let out = c.cli(&[
        "node",
        "drain",
        "t-vdrain-a",
        "--offline",
        "--timeout",
        "240",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    let moved = wait_ready(&c, "vm");
    assert_eq!(moved["node"], "t-vdrain-b", "{moved}");
    assert_eq!(
        fetch(&c, &moved, "/disk.txt"),
        marker,
        "the disk moved with the VM: no write lost"
    );
    let (_, node) = c.http("GET", "/v1/nodes/t-vdrain-a", None);
    assert_eq!(node["state"], "draining");
    assert_eq!(node["instances"], 0);
}
