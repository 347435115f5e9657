//! One file over HTTP(S) to disk, its MD5 computed while it streams, with a
//! progress bar on a terminal and a line per quarter otherwise.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};

use super::FetchError;

/// Larger than any official archive (SVHN's train file is 182 MB).
const MAX_BYTES: u64 = 4 << 30;

/// Downloads `url` into `dest` and returns the MD5 of what was written (hex).
/// A connection that ends before the announced length is an error.
pub fn download(url: &str, dest: &Path) -> Result<String, FetchError> {
    let network = |detail: String| FetchError::Network {
        url: url.to_string(),
        detail,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| network(e.to_string()))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = response
        .into_body()
        .into_with_config()
        .limit(MAX_BYTES)
        .reader();
    let io = |source| FetchError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let mut out = BufWriter::new(File::create(dest).map_err(io)?);
    let progress = Progress::new(url, total);
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = body.read(&mut buf).map_err(|e| {
            network(format!(
                "connection lost after {got} of {} bytes: {e}",
                total.map_or("?".into(), |t| t.to_string())
            ))
        })?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io)?;
        got += n as u64;
        progress.at(got);
    }
    out.flush().map_err(io)?;
    out.get_ref().sync_all().map_err(io)?;
    progress.done(got);
    if let Some(t) = total.filter(|&t| t != got) {
        return Err(network(format!("received {got} of {t} bytes")));
    }
    Ok(hex(&md5.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A bar on a terminal; plain lines at each quarter when stderr is redirected.
struct Progress {
    bar: Option<ProgressBar>,
    total: Option<u64>,
    url: String,
    next_quarter: std::cell::Cell<u64>,
}

impl Progress {
    fn new(url: &str, total: Option<u64>) -> Progress {
        let name = url.rsplit('/').next().unwrap_or(url);
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = total.map_or_else(ProgressBar::new_spinner, ProgressBar::new);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            bar.set_message(name.to_string());
            bar
        });
        if bar.is_none() {
            eprintln!("downloading {url}");
        }
        Progress {
            bar,
            total,
            url: url.to_string(),
            next_quarter: std::cell::Cell::new(1),
        }
    }

    fn at(&self, got: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(got);
        } else if let Some(total) = self.total {
            let q = self.next_quarter.get();
            if q < 4 && got * 4 >= total * q {
                eprintln!("  {}: {}% of {} bytes", self.url, q * 25, total);
                self.next_quarter.set(q + 1);
            }
        }
    }

    fn done(&self, got: u64) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("  {}: {got} bytes", self.url),
        }
    }
}
