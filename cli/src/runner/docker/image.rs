//! Images without a registry: `FROM scratch` images assembled from binaries on
//! this machine and built through the engine's build API.
//!
//! Nothing can be pulled (no registry here, and many users are offline), so a
//! binary is packaged with exactly what it needs to start: itself, the shared
//! libraries the dynamic loader would map (as `ldd` resolves them), and the
//! loader at its absolute path. A statically linked binary needs only itself.
//! Since glibc 2.34 the `files` and `dns` NSS modules live inside libc.so.6, so
//! name lookups work without /etc/nsswitch.conf (the data plane resolves names
//! with its own resolver anyway).
//!
//! An image is tagged by a hash of everything that goes into it, so deploying
//! an unchanged binary again finds its image and builds nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use bollard::query_parameters::BuildImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::error::DockerError;
use super::labels;

/// Where packaged binaries live inside an image.
pub const BIN_DIR: &str = "/usr/local/bin";

/// Bumped when the layout of generated images changes, so old tags are not
/// mistaken for new images.
const LAYOUT_VERSION: &str = "mp-scratch-image/1";

/// What goes into an image, before it is read: each file's place in the
/// image and on this machine. Cheap to make (no file is read), so a deploy
/// can tell from file metadata alone that the image exists already.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    files: BTreeMap<String, (PathBuf, u32)>,
    lib_dirs: BTreeSet<String>,
}

impl Sources {
    /// The sources of an image holding `binaries` under [`BIN_DIR`] (by file
    /// name) and every shared library they load, at the paths the host's
    /// loader resolves them to. Fails with what to do when a binary is not a
    /// native executable (a script needs a user image) or a library is
    /// missing.
    pub fn for_binaries(binaries: &[PathBuf]) -> Result<Sources, DockerError> {
        let mut src = Sources::default();
        for bin in binaries {
            let mut magic = [0u8; 4];
            let read = std::fs::File::open(bin).and_then(|mut f| {
                use std::io::Read;
                f.read_exact(&mut magic)
            });
            match read {
                Ok(()) if &magic == b"\x7fELF" => {}
                Ok(()) | Err(_) if bin.is_file() => {
                    return Err(DockerError::Package {
                        path: bin.clone(),
                        reason: "not a native executable (a script or an interpreter's \
                                 program?); give the docker runner an image that can run it"
                            .into(),
                    })
                }
                _ => {
                    return Err(DockerError::Package {
                        path: bin.clone(),
                        reason: "no such file".into(),
                    })
                }
            }
            let name =
                bin.file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| DockerError::Package {
                        path: bin.clone(),
                        reason: "has no usable file name".into(),
                    })?;
            src.files
                .insert(format!("{BIN_DIR}/{name}"), (bin.clone(), 0o755));
            for lib in shared_libraries(bin)? {
                if let Some(dir) = lib.parent() {
                    src.lib_dirs.insert(dir.to_string_lossy().into_owned());
                }
                src.files
                    .insert(lib.to_string_lossy().into_owned(), (lib, 0o755));
            }
        }
        Ok(src)
    }

    /// A digest of the files' places in the image, devices, inodes, sizes
    /// and modification times: equal keys mean, as for `make`, that nothing
    /// was rebuilt.
    pub fn metadata_key(&self) -> Result<String, DockerError> {
        use std::os::unix::fs::MetadataExt;
        let mut h = Sha256::new();
        h.update(LAYOUT_VERSION.as_bytes());
        for (at, (path, mode)) in &self.files {
            let m = std::fs::metadata(path).map_err(|e| DockerError::Package {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            // Not the path: a hard link to the same file is the same file.
            h.update(at.as_bytes());
            for n in [
                m.len(),
                m.ino(),
                m.dev(),
                m.mtime() as u64,
                m.mtime_nsec() as u64,
            ] {
                h.update(n.to_le_bytes());
            }
            h.update(mode.to_le_bytes());
        }
        Ok(hex(&h.finalize()[..16]))
    }

    /// Reads every file.
    pub fn load(&self) -> Result<Rootfs, DockerError> {
        let mut fs = Rootfs {
            files: BTreeMap::new(),
            lib_dirs: self.lib_dirs.clone(),
        };
        for (at, (path, mode)) in &self.files {
            let data = std::fs::read(path).map_err(|e| DockerError::Package {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            fs.files.insert(at.clone(), File { mode: *mode, data });
        }
        Ok(fs)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The files of a `FROM scratch` image, keyed by their absolute path inside it.
#[derive(Debug, Clone, Default)]
pub struct Rootfs {
    files: BTreeMap<String, File>,
    lib_dirs: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct File {
    mode: u32,
    data: Vec<u8>,
}

impl Rootfs {
    /// A root filesystem holding `binaries` and what they need to run (see
    /// [`Sources::for_binaries`]).
    pub fn for_binaries(binaries: &[PathBuf]) -> Result<Rootfs, DockerError> {
        Sources::for_binaries(binaries)?.load()
    }

    /// The number of bytes the image's files take.
    pub fn size(&self) -> usize {
        self.files.values().map(|f| f.data.len()).sum()
    }

    /// The Dockerfile that turns the context into the image.
    fn dockerfile(&self) -> String {
        let mut d = String::from("FROM scratch\nCOPY rootfs/ /\n");
        // The loader finds the libraries without an ld.so.cache this way,
        // wherever the host's distribution keeps them.
        if !self.lib_dirs.is_empty() {
            let dirs: Vec<&str> = self.lib_dirs.iter().map(String::as_str).collect();
            d.push_str(&format!("ENV LD_LIBRARY_PATH={}\n", dirs.join(":")));
        }
        d.push_str(&format!("ENV PATH={BIN_DIR}\nWORKDIR /tmp\n"));
        // Nobody needs root to serve gRPC on an unprivileged port.
        d.push_str("USER 65534:65534\n");
        d
    }

    /// A hex digest of everything that goes into the image.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(LAYOUT_VERSION.as_bytes());
        h.update(self.dockerfile().as_bytes());
        for (path, f) in &self.files {
            h.update((path.len() as u64).to_le_bytes());
            h.update(path.as_bytes());
            h.update(f.mode.to_le_bytes());
            h.update((f.data.len() as u64).to_le_bytes());
            h.update(&f.data);
        }
        hex(&h.finalize())
    }

    /// The build context: a tar holding the Dockerfile and `rootfs/`.
    pub fn context_tar(&self) -> Result<Vec<u8>, DockerError> {
        let mut tar = tar::Builder::new(Vec::with_capacity(self.size() + 64 * 1024));
        let io = |e: std::io::Error| DockerError::Context(e.to_string());
        let dockerfile = self.dockerfile();
        append(&mut tar, "Dockerfile", 0o644, dockerfile.as_bytes()).map_err(io)?;
        // Directories first (with the modes a container expects), then files.
        let mut dirs = BTreeSet::new();
        for path in self.files.keys() {
            let mut p = Path::new(path).parent();
            while let Some(d) = p {
                if d != Path::new("/") {
                    dirs.insert(d.to_string_lossy().into_owned());
                }
                p = d.parent();
            }
        }
        dirs.insert("/tmp".into());
        for d in &dirs {
            let mode = if d == "/tmp" { 0o1777 } else { 0o755 };
            append_dir(&mut tar, &format!("rootfs{d}"), mode).map_err(io)?;
        }
        for (path, f) in &self.files {
            append(&mut tar, &format!("rootfs{path}"), f.mode, &f.data).map_err(io)?;
        }
        tar.into_inner().map_err(io)
    }
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(0);
    tar.append_data(&mut header, path, data)
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(mode);
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mtime(0);
    tar.append_data(&mut header, format!("{path}/"), std::io::empty())
}

/// The shared libraries (and the dynamic loader) `binary` needs, as absolute
/// paths on this machine; empty for a statically linked binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, DockerError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| DockerError::Package {
            path: binary.to_path_buf(),
            reason: format!(
                "cannot list its shared libraries with ldd ({e}); install ldd (glibc's \
                 libc-bin) or give a statically linked binary"
            ),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    parse_ldd(&stdout, &stderr, out.status.success()).map_err(|reason| DockerError::Package {
        path: binary.to_path_buf(),
        reason,
    })
}

/// Reads `ldd`'s report. Lines look like `libc.so.6 => /lib/.../libc.so.6
/// (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)` (the loader, by absolute
/// path), `linux-vdso.so.1 (0x...)` (in the kernel: nothing to copy) or
/// `libfoo.so => not found`.
fn parse_ldd(stdout: &str, stderr: &str, success: bool) -> Result<Vec<PathBuf>, String> {
    let all = format!("{stdout}{stderr}");
    if all.contains("not a dynamic executable") || all.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !success {
        return Err(format!("ldd cannot read it: {}", all.trim()));
    }
    let mut libs = Vec::new();
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!(
                        "needs {} which this machine's loader cannot find",
                        name.trim()
                    ));
                }
                rest
            }
            None => line,
        };
        // Drop the load address; what is left is a path or a kernel object.
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The repository of the data-plane image (mp-lb and mp-gather).
pub const DATA_PLANE_REPOSITORY: &str = "mp-data-plane";

/// Whether `image` (`repository:tag`) is named the way mp names the images
/// it builds.
pub fn is_our_repository(image: &str) -> bool {
    let repository = image.rsplit_once(':').map_or(image, |(r, _)| r);
    repository == DATA_PLANE_REPOSITORY || repository.starts_with("mp-handler")
}

/// A repository name Docker accepts for an image of the binary called `name`.
pub fn repository_for(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let clean = clean.trim_matches('-');
    if clean.is_empty() {
        "mp-handler".into()
    } else {
        format!("mp-handler-{clean}")
    }
}

/// Label on images mp builds: the [`Sources::metadata_key`] they were built
/// from, so an unchanged binary is found without reading it.
pub const SOURCES_LABEL: &str = "mp.sources";

/// The tag of an image of `sources` in `repository`, building it unless the
/// engine already has it: found by the files' metadata, else by the digest of
/// their content (`repository:<digest>`). `progress` hears one line when a
/// build starts.
pub async fn ensure_image(
    docker: &Docker,
    repository: &str,
    sources: Sources,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<String, DockerError> {
    let key = sources.metadata_key()?;
    let filters: std::collections::HashMap<&str, Vec<String>> =
        [("label", vec![format!("{}={}", SOURCES_LABEL, key)])]
            .into_iter()
            .collect();
    let options = bollard::query_parameters::ListImagesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let found = docker
        .list_images(Some(options))
        .await
        .map_err(|e| DockerError::api("listing images", e))?;
    let prefix = format!("{repository}:");
    if let Some(tag) = found
        .iter()
        .flat_map(|i| i.repo_tags.iter())
        .find(|t| t.starts_with(&prefix))
    {
        return Ok(tag.clone());
    }
    // Reading and hashing a large debug binary takes a moment: off the runtime.
    let rootfs = tokio::task::spawn_blocking(move || sources.load())
        .await
        .map_err(|e| DockerError::Context(e.to_string()))??;
    let tag = format!("{repository}:{}", &rootfs.digest()[..16]);
    if docker.inspect_image(&tag).await.is_ok() {
        return Ok(tag);
    }
    progress(format!(
        "building image {tag} ({:.1} MB, FROM scratch)",
        rootfs.size() as f64 / 1e6
    ));
    let started = std::time::Instant::now();
    let context = tokio::task::spawn_blocking(move || rootfs.context_tar())
        .await
        .map_err(|e| DockerError::Context(e.to_string()))??;
    let image_labels = [
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
        (SOURCES_LABEL.to_string(), key),
    ]
    .into_iter()
    .collect();
    let options = BuildImageOptionsBuilder::default()
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .labels(&image_labels)
        .build();
    let mut build = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(step) = build.next().await {
        step.map_err(|e| DockerError::api(format!("building image {tag}"), e))?;
    }
    // The legacy builder reports some failures only by not tagging.
    docker
        .inspect_image(&tag)
        .await
        .map_err(|e| DockerError::api(format!("building image {tag}"), e))?;
    progress(format!(
        "built image {tag} in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(tag)
}

/// How long a new image is safe from [`remove_older`].
const KEEP_RECENT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Removes the other tags of `repository` (earlier builds of the same
/// binaries), so rebuilding does not pile up images. The engine refuses to
/// remove what a container still uses; those are kept, and so are images
/// made in the last half hour (another deploy may be about to use one).
pub async fn remove_older(docker: &Docker, repository: &str, keep: &str) {
    let Some(images) = managed_images(docker, ("reference", repository.to_string())).await else {
        return;
    };
    let prefix = format!("{repository}:");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Another deploy may have just built one and not started its containers
    // yet: leave recent images alone.
    let settled = |created: i64| now - created > KEEP_RECENT.as_secs() as i64;
    for tag in images
        .iter()
        .filter(|i| settled(i.created))
        .flat_map(|i| i.repo_tags.iter())
    {
        if tag.starts_with(&prefix) && tag != keep {
            let options = bollard::query_parameters::RemoveImageOptionsBuilder::default().build();
            let _ = docker.remove_image(tag, Some(options), None).await;
        }
    }
    // Two builds of the same content at once (two deploys) both tag it; the
    // loser is left untagged.
    if let Some(dangling) = managed_images(docker, ("dangling", "true".to_string())).await {
        for image in dangling.into_iter().filter(|i| settled(i.created)) {
            let options = bollard::query_parameters::RemoveImageOptionsBuilder::default().build();
            let _ = docker.remove_image(&image.id, Some(options), None).await;
        }
    }
}

/// The images mp made (by label) that also match `filter`; `None` when the
/// engine does not answer.
async fn managed_images(
    docker: &Docker,
    filter: (&'static str, String),
) -> Option<Vec<bollard::models::ImageSummary>> {
    let filters: std::collections::HashMap<&str, Vec<String>> = [
        (filter.0, vec![filter.1]),
        (
            "label",
            vec![format!("{}={}", labels::MANAGED_BY, labels::MANAGER)],
        ),
    ]
    .into_iter()
    .collect();
    let options = bollard::query_parameters::ListImagesOptionsBuilder::default()
        .filters(&filters)
        .build();
    docker.list_images(Some(options)).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_report_gives_libraries_and_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd5b5f1000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0b)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0d)\n";
        let libs = parse_ldd(out, "", true).unwrap();
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn static_binaries_need_nothing() {
        assert!(parse_ldd("", "\tnot a dynamic executable\n", false)
            .unwrap()
            .is_empty());
        assert!(parse_ldd("\tstatically linked\n", "", true)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_missing_library_is_named() {
        let err = parse_ldd("\tlibfoo.so.1 => not found\n", "", true).unwrap_err();
        assert!(err.contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn only_our_names_are_ours() {
        assert!(is_our_repository("mp-data-plane:0123"));
        assert!(is_our_repository("mp-handler-hello:0123"));
        assert!(!is_our_repository("my/leaf:1"));
        assert!(!is_our_repository("mp-data-plane-mine:1"));
    }

    #[test]
    fn repository_names_are_what_docker_accepts() {
        assert_eq!(
            repository_for("histogram-leaf"),
            "mp-handler-histogram-leaf"
        );
        assert_eq!(repository_for("My_Leaf.v2"), "mp-handler-my-leaf-v2");
        assert_eq!(repository_for("__"), "mp-handler");
    }

    #[test]
    fn digest_follows_content() {
        let mut a = Rootfs::default();
        a.files.insert(
            "/usr/local/bin/x".into(),
            File {
                mode: 0o755,
                data: b"one".to_vec(),
            },
        );
        let mut b = a.clone();
        assert_eq!(a.digest(), b.digest());
        b.files.get_mut("/usr/local/bin/x").unwrap().data = b"two".to_vec();
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn scripts_are_refused_with_a_hint() {
        let dir = std::env::temp_dir().join(format!("mp-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("leaf.py");
        std::fs::write(&script, "print('hi')\n").unwrap();
        let err = Rootfs::for_binaries(&[script]).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("image that can run it"), "{err}");
    }
}
