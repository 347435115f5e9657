//! Turning a verified download into data-set files inside the temporary
//! content directory.

use std::fs::File;
use std::io::BufReader;
use std::path::{Component, Path};

use flate2::read::GzDecoder;

use super::{FetchError, Unpack};

pub fn unpack(how: Unpack, file: &Path, content: &Path) -> Result<(), FetchError> {
    let err = |detail: String| FetchError::Unpack {
        path: file.to_path_buf(),
        detail,
    };
    let io = |source| FetchError::Io {
        path: file.to_path_buf(),
        source,
    };
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| err("file name is not UTF-8".into()))?;
    match how {
        Unpack::AsIs => {
            std::fs::copy(file, content.join(name)).map_err(io)?;
        }
        Unpack::Gunzip => {
            let out_name = name.strip_suffix(".gz").unwrap_or(name);
            let mut input = GzDecoder::new(BufReader::new(File::open(file).map_err(io)?));
            let out_path = content.join(out_name);
            let mut out = File::create(&out_path).map_err(|source| FetchError::Io {
                path: out_path.clone(),
                source,
            })?;
            std::io::copy(&mut input, &mut out).map_err(|e| err(format!("gzip: {e}")))?;
        }
        Unpack::TarGz { member_dir } => {
            let input = GzDecoder::new(BufReader::new(File::open(file).map_err(io)?));
            let mut archive = tar::Archive::new(input);
            let mut files = 0;
            for entry in archive.entries().map_err(|e| err(format!("tar: {e}")))? {
                let mut entry = entry.map_err(|e| err(format!("tar: {e}")))?;
                let path = entry
                    .path()
                    .map_err(|e| err(format!("tar: {e}")))?
                    .into_owned();
                // Only regular files directly under the data set's directory:
                // nothing outside it, no links.
                let mut parts = path.components();
                let (Some(Component::Normal(top)), Some(Component::Normal(leaf)), None) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if top != member_dir || !entry.header().entry_type().is_file() {
                    continue;
                }
                let out_path = content.join(leaf);
                entry
                    .unpack(&out_path)
                    .map_err(|e| err(format!("tar: {}: {e}", path.display())))?;
                files += 1;
            }
            if files == 0 {
                return Err(err(format!("no files under {member_dir}/ in the archive")));
            }
        }
    }
    Ok(())
}
