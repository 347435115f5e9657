//! Fetching from a local HTTP server started by each test: success, checksum
//! failure, a connection dropped half-way, no server at all, and archives
//! that try to write outside their directory; then `dropjit data` and `train`
//! on an empty data directory as a user runs them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use flate2::write::GzEncoder;
use flate2::Compression;
use md5::{Digest, Md5};

use dropjit::data::DatasetKind;
use dropjit::fetch::*;

/// How the server answers for one file.
#[derive(Clone)]
enum Reply {
    Whole(Vec<u8>),
    /// Announces the whole length, sends half, closes.
    DropHalf(Vec<u8>),
}

/// Serves `files` by name on 127.0.0.1 until the test ends; returns the base URL.
fn serve(files: HashMap<String, Reply>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let files = Arc::new(Mutex::new(files));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Drain the headers.
            let mut h = String::new();
            while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let name = line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/');
            let reply = files.lock().unwrap().get(name).cloned();
            let _ = match reply {
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
                Some(Reply::Whole(body)) => stream
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| stream.write_all(&body)),
                Some(Reply::DropHalf(body)) => stream
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| stream.write_all(&body[..body.len() / 2])),
            };
        }
    });
    base
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A CIFAR-10-layout `tar.gz`: 3 training records per batch file, 2 test records.
fn cifar10_archive(extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, data).unwrap();
    };
    let record = |label: u8, records: usize| -> Vec<u8> {
        (0..records)
            .flat_map(|r| {
                std::iter::once(label).chain((0..3072).map(move |i| ((i * 7 + r) % 256) as u8))
            })
            .collect()
    };
    for b in 1..=5 {
        add(
            &format!("cifar-10-batches-bin/data_batch_{b}.bin"),
            &record(b as u8, 3),
        );
    }
    add("cifar-10-batches-bin/test_batch.bin", &record(0, 2));
    add("cifar-10-batches-bin/batches.meta.txt", b"airplane\n");
    for (path, data) in extra {
        add(path, data);
    }
    gzip(&tar.into_inner().unwrap())
}

fn opts(base: String, sums: &[(&str, String)]) -> FetchOptions {
    FetchOptions {
        base_url: Some(base),
        md5: sums
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect(),
    }
}

/// Names in `root`, sorted: what a fetch left behind.
fn listing(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn fetch_unpacks_verifies_and_renames_into_place() {
    let archive = cifar10_archive(&[]);
    let sum = md5_hex(&archive);
    let base = serve(HashMap::from([(
        "cifar-10-binary.tar.gz".to_string(),
        Reply::Whole(archive),
    )]));
    let root = tempfile::tempdir().unwrap();
    let o = opts(base, &[("cifar-10-binary.tar.gz", sum.clone())]);
    let dir = fetch(DatasetKind::Cifar10, root.path(), &o).expect("fetches");
    assert_eq!(dir, root.path().join("cifar-10-batches-bin"));
    assert_eq!(
        listing(root.path()),
        ["cifar-10-batches-bin"],
        "no temporary left"
    );
    assert_eq!(status(DatasetKind::Cifar10, root.path()), Status::Verified);
    let marker = std::fs::read_to_string(dir.join(VERIFIED_FILE)).unwrap();
    assert!(marker.contains(&sum), "{marker}");
    // The data loader reads what was fetched.
    let ds = dropjit::data::load_dataset(
        root.path(),
        &dropjit::data::DataLoadOptions {
            kind: Some(dropjit::data::DatasetKind::Cifar10),
            ..Default::default()
        },
    )
    .expect("loads");
    assert_eq!((ds.train.len(), ds.test.len()), (15, 2));
    // A second fetch keeps the verified copy (the server is not asked again).
    let offline = opts("http://127.0.0.1:9".into(), &[]);
    assert_eq!(
        fetch(DatasetKind::Cifar10, root.path(), &offline).unwrap(),
        dir
    );
}

#[test]
fn checksum_mismatch_leaves_nothing_behind() {
    let archive = cifar10_archive(&[]);
    let base = serve(HashMap::from([(
        "cifar-10-binary.tar.gz".to_string(),
        Reply::Whole(archive),
    )]));
    let root = tempfile::tempdir().unwrap();
    // The official checksum: our test archive cannot match it.
    let err = fetch(DatasetKind::Cifar10, root.path(), &opts(base, &[])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("checksum mismatch") && text.contains("c32a1d4ab5d03f1284b67883e8d87530"),
        "{text}"
    );
    assert!(
        listing(root.path()).is_empty(),
        "{:?}",
        listing(root.path())
    );
    assert_eq!(status(DatasetKind::Cifar10, root.path()), Status::Absent);
}

#[test]
fn connection_dropped_half_way_is_an_error_and_leaves_nothing() {
    let archive = cifar10_archive(&[]);
    let sum = md5_hex(&archive);
    let base = serve(HashMap::from([(
        "cifar-10-binary.tar.gz".to_string(),
        Reply::DropHalf(archive),
    )]));
    let root = tempfile::tempdir().unwrap();
    let o = opts(base.clone(), &[("cifar-10-binary.tar.gz", sum)]);
    let text = fetch(DatasetKind::Cifar10, root.path(), &o)
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with(&format!("cannot download {base}/cifar-10-binary.tar.gz")),
        "{text}"
    );
    assert!(
        listing(root.path()).is_empty(),
        "{:?}",
        listing(root.path())
    );
}

#[test]
fn no_server_gives_one_line_naming_the_url() {
    // A port nobody listens on: bind, then close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = tempfile::tempdir().unwrap();
    let o = opts(format!("http://127.0.0.1:{port}"), &[]);
    let text = fetch(DatasetKind::Svhn, root.path(), &o)
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with(&format!(
            "cannot download http://127.0.0.1:{port}/train_32x32.mat"
        )),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
    assert!(listing(root.path()).is_empty());
    let help = manual_help(DatasetKind::Svhn, root.path());
    assert!(
        help.contains("http://ufldl.stanford.edu/housenumbers/train_32x32.mat"),
        "{help}"
    );
    assert!(
        help.contains(&root.path().join("svhn").display().to_string()),
        "{help}"
    );
}

#[test]
fn a_killed_fetch_leaves_no_data_and_is_cleaned_up_next_time() {
    let archive = cifar10_archive(&[]);
    let sum = md5_hex(&archive);
    let root = tempfile::tempdir().unwrap();
    // What a killed fetch leaves: a temporary directory, never the data directory.
    let stale = root
        .path()
        .join(".fetch-cifar-10-batches-bin-12345/content");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("data_batch_1.bin"), b"partial").unwrap();
    assert!(
        dropjit::data::locate_dataset(root.path(), None).is_err(),
        "not taken for data"
    );
    let base = serve(HashMap::from([(
        "cifar-10-binary.tar.gz".to_string(),
        Reply::Whole(archive),
    )]));
    fetch(
        DatasetKind::Cifar10,
        root.path(),
        &opts(base, &[("cifar-10-binary.tar.gz", sum)]),
    )
    .unwrap();
    assert_eq!(listing(root.path()), ["cifar-10-batches-bin"]);
}

#[test]
fn archive_members_outside_the_data_set_directory_are_not_written() {
    let archive = cifar10_archive(&[
        ("evil.bin", b"x"),
        ("cifar-10-batches-bin/nested/deep.bin", b"x"),
    ]);
    let sum = md5_hex(&archive);
    let base = serve(HashMap::from([(
        "cifar-10-binary.tar.gz".to_string(),
        Reply::Whole(archive),
    )]));
    let root = tempfile::tempdir().unwrap();
    let dir = fetch(
        DatasetKind::Cifar10,
        root.path(),
        &opts(base, &[("cifar-10-binary.tar.gz", sum)]),
    )
    .unwrap();
    assert_eq!(listing(root.path()), ["cifar-10-batches-bin"]);
    assert!(!dir.join("nested").exists() && !dir.join("evil.bin").exists());
}

#[test]
fn gzipped_files_are_unpacked_by_name() {
    let files: Vec<(&str, Vec<u8>)> = DatasetKind::Mnist
        .files()
        .iter()
        .map(|f| (f.name, gzip(f.name.as_bytes())))
        .collect();
    let sums: Vec<(&str, String)> = files.iter().map(|(n, b)| (*n, md5_hex(b))).collect();
    let base = serve(
        files
            .iter()
            .map(|(n, b)| (n.to_string(), Reply::Whole(b.clone())))
            .collect(),
    );
    let root = tempfile::tempdir().unwrap();
    let dir = fetch(DatasetKind::Mnist, root.path(), &opts(base, &sums)).unwrap();
    for f in DatasetKind::Mnist.files() {
        let plain = f.name.strip_suffix(".gz").unwrap();
        assert_eq!(std::fs::read(dir.join(plain)).unwrap(), f.name.as_bytes());
    }
}

#[test]
fn a_directory_put_there_by_hand_is_not_overwritten() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("svhn")).unwrap();
    assert_eq!(status(DatasetKind::Svhn, root.path()), Status::Present);
    let text = fetch(
        DatasetKind::Svhn,
        root.path(),
        &opts("http://127.0.0.1:9".into(), &[]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        text.contains("is not a complete svhn fetched by dropjit"),
        "{text}"
    );
}

#[test]
fn data_set_names_parse_and_unknown_ones_list_the_choices() {
    assert_eq!(
        "fashion-mnist".parse::<DatasetKind>().unwrap(),
        DatasetKind::FashionMnist
    );
    assert!("imagenet"
        .parse::<DatasetKind>()
        .unwrap_err()
        .to_string()
        .contains("cifar10, cifar100, svhn, mnist or fashion-mnist"));
}

fn dropjit(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dropjit"));
    cmd.args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap())
        .env_remove("DROPJIT_DATA")
        .env_remove(URL_ENV)
        .env_remove(MD5_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run dropjit")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn train_on_an_empty_data_directory_fetches_and_starts() {
    let archive = cifar10_archive(&[]);
    let env = [
        (
            MD5_ENV,
            format!("cifar-10-binary.tar.gz={}", md5_hex(&archive)),
        ),
        (
            URL_ENV,
            serve(HashMap::from([(
                "cifar-10-binary.tar.gz".to_string(),
                Reply::Whole(archive),
            )])),
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    let args = [
        "train",
        "--graph",
        "models/convnet_quick.json",
        "--data",
        data.to_str().unwrap(),
        "--iterations",
        "2",
        "--batch",
        "5",
        "--out",
        run.to_str().unwrap(),
    ];
    let out = dropjit(&args, &env);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", text(&out.stdout));
    assert!(
        err.contains("cifar10 not found in") && err.contains("fetching it"),
        "{err}"
    );
    assert_eq!(
        dropjit::fetch::status(DatasetKind::Cifar10, &data),
        Status::Verified
    );
    assert!(run.join("config.json").is_file());
}

#[test]
fn no_download_and_no_network_each_fail_in_one_error_that_says_what_to_do() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = [(URL_ENV, format!("http://127.0.0.1:{port}"))];
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = dropjit(
        &[
            "train",
            "--graph",
            "models/convnet_quick.json",
            "--data",
            data.to_str().unwrap(),
            "--no-download",
        ],
        &env,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "dropjit data fetch cifar10 --dir {}",
            data.display()
        )),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = dropjit(
        &["data", "fetch", "svhn", "--dir", data.to_str().unwrap()],
        &env,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot download"), "{err}");
    assert!(
        err.contains("http://ufldl.stanford.edu/housenumbers/test_32x32.mat"),
        "{err}"
    );
    assert!(listing(&data).is_empty(), "{:?}", listing(&data));
}

#[test]
fn data_list_shows_what_is_present_and_verified() {
    let archive = cifar10_archive(&[]);
    let env = [
        (
            MD5_ENV,
            format!("cifar-10-binary.tar.gz={}", md5_hex(&archive)),
        ),
        (
            URL_ENV,
            serve(HashMap::from([(
                "cifar-10-binary.tar.gz".to_string(),
                Reply::Whole(archive),
            )])),
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    std::fs::create_dir(tmp.path().join("svhn")).unwrap();
    let out = dropjit(&["data", "fetch", "cifar10", "--dir", dir], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("cifar10 is in"),
        "{}",
        text(&out.stdout)
    );
    let out = dropjit(&["data", "list", "--dir", dir], &[]);
    let list = text(&out.stdout);
    let line = |name: &str| {
        list.lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {list}"))
            .to_string()
    };
    assert!(line("cifar10").ends_with("fetched and verified"), "{list}");
    assert!(
        line("svhn").contains("present (not fetched by dropjit"),
        "{list}"
    );
    assert!(line("mnist").ends_with("absent"), "{list}");
}
