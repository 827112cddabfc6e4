//! `cargo xtask vm-test [KERNEL...]`: boots Debian's kernels under QEMU and
//! runs tcpmon inside, so older kernels than the host's are tested too.
//!
//! For each kernel: `apt-get download` its Debian package (cached, unpacked
//! with `dpkg -x` under `target/vm/`), pack an initramfs with tcpmon (the
//! debug build that `cargo test` already made, or with `--release` the
//! release build; without debug info, with the shared libraries `ldd` lists
//! and the dynamic loader), busybox, iproute2's `ip` (busybox's cannot make
//! veth pairs), the modules TC needs and `vm-init.sh` as `/init`; boot it
//! with software emulation (TCG: nested KVM hangs here), read the serial
//! console, and kill QEMU if it runs too long. The guest prints one PASS/FAIL line per check;
//! a kernel passes when its guest finished with no failure.
//!
//! The eBPF object tested is the committed `tcpmon/bpf/tcpmon.bpf.o` that
//! tcpmon embeds (the same in both profiles): after changing the kernel
//! crate, run `cargo xtask build-ebpf` first.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{self, capture, logged};
use crate::{probe, setup};

/// What `cargo xtask vm-test` (and `cargo xtask test`) boots without
/// arguments: Debian 12's kernel, without tcx, and Debian 12's 6.12 (as in
/// Debian 13), with tcx.
pub const DEFAULT_KERNELS: &[&str] = &["6.1", "6.12"];
/// The guest's test script.
const INIT: &str = include_str!("vm-init.sh");
/// Modules TC attachment needs on distribution kernels (clsact lives in
/// sch_ingress) and the veth pair of the test; loaded with their dependencies.
const MODULES: &[&str] = &["sch_ingress", "cls_bpf", "veth"];
/// The whole boot and test; it takes one to two minutes when the host is
/// idle (TCG), and a busy host can double that.
const TIMEOUT: Duration = Duration::from_secs(420);

pub fn run(kernels: &[String], release: bool) -> Result<()> {
    if !probe::is_debian_like() {
        bail!("vm-test fetches Debian's kernel packages with apt-get: it needs a Debian-like host");
    }
    setup::ensure_vm()?;
    let root = util::workspace_root();
    let dir = target_dir(&root).join("vm");
    let kernels: Vec<String> = if kernels.is_empty() {
        DEFAULT_KERNELS.iter().map(|k| k.to_string()).collect()
    } else {
        kernels.to_vec()
    };

    let mut build = Command::new("cargo");
    build.current_dir(&root).args(["build", "-p", "tcpmon"]);
    if release {
        build.arg("--release");
    }
    util::stream(&mut build)?;
    let profile = if release { "release" } else { "debug" };
    let tcpmon = target_dir(&root).join(profile).join("tcpmon");

    let mut results = Vec::new();
    for kernel in &kernels {
        println!("\n==> vm-test {kernel}");
        let start = Instant::now();
        let result = test_kernel(kernel, &dir, &tcpmon);
        let took = start.elapsed();
        match &result {
            Ok(r) if r.passed() => println!(
                "==> vm-test {kernel} ({}): PASS, {} checks in {}",
                r.release,
                r.passes,
                util::human(took)
            ),
            Ok(r) => {
                println!("==> guest console log ({}):", r.log.display());
                println!("{}", std::fs::read_to_string(&r.log).unwrap_or_default());
                println!(
                    "==> vm-test {kernel} ({}): FAIL after {}: {}",
                    r.release,
                    util::human(took),
                    r.verdict()
                );
            }
            Err(e) => println!("==> vm-test {kernel}: FAIL: {e:#}"),
        }
        results.push((kernel, result.map(|r| r.passed()).unwrap_or(false), took));
    }

    println!("\n==> vm-test summary");
    for (kernel, ok, took) in &results {
        let verdict = if *ok { "PASS" } else { "FAIL" };
        println!("  {kernel:<8} {verdict}  ({})", util::human(*took));
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(k, _, _)| k.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("vm-test failed on {}", failed.join(", "))
    }
}

/// Honours CARGO_TARGET_DIR like cargo does.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// What the guest reported.
struct GuestResult {
    release: String,
    passes: usize,
    failures: Vec<String>,
    /// The guest printed its last line (it was not cut short).
    done: bool,
    timed_out: bool,
    log: PathBuf,
}

impl GuestResult {
    fn passed(&self) -> bool {
        self.done && !self.timed_out && self.failures.is_empty() && self.passes > 0
    }

    fn verdict(&self) -> String {
        if self.timed_out {
            format!("QEMU killed after {}s", TIMEOUT.as_secs())
        } else if !self.failures.is_empty() {
            format!("{} checks failed", self.failures.len())
        } else if !self.done {
            "the guest stopped before its last check (see the log above)".into()
        } else {
            "no check ran".into()
        }
    }
}

fn test_kernel(kernel: &str, dir: &Path, tcpmon: &Path) -> Result<GuestResult> {
    if !kernel.starts_with("linux-image-") && !kernel.split('.').all(|p| p.parse::<u32>().is_ok()) {
        bail!(
            "kernel {kernel:?}: give a Debian version such as 6.1 or 6.12, or a package name such \
             as linux-image-6.1.0-47-cloud-amd64"
        );
    }
    let get = || -> Result<(String, PathBuf)> {
        let package = resolve_package(kernel)?;
        let unpacked = fetch(&package, dir)?;
        Ok((package, unpacked))
    };
    // Debian replaces kernel ABIs in point releases: with old package lists
    // the download of what they name fails until the lists are updated.
    let (package, unpacked) = match get() {
        Ok(got) => got,
        Err(e) => {
            println!("failed ({e:#}); updating the apt lists and trying again");
            apt_update()?;
            get()?
        }
    };
    let (vmlinuz, modules_dir) = kernel_files(&unpacked)?;
    let release = modules_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("kernel package {package} (release {release})");

    let work = dir.join("run").join(&release);
    let initramfs = build_initramfs(&work, tcpmon, &modules_dir)?;
    let log = work.join("console.log");
    let mut result = boot(&vmlinuz, &initramfs, &log)?;
    result.release = release;
    Ok(result)
}

// --- Kernel packages -----------------------------------------------------------

/// A full package name as it is; `X.Y` through Debian's cloud meta-packages
/// (`linux-image-X.Y-cloud-amd64` where it exists, else the distribution's
/// default `linux-image-cloud-amd64`), to whatever ABI the mirror has now.
fn resolve_package(kernel: &str) -> Result<String> {
    if kernel.starts_with("linux-image-") {
        return Ok(kernel.to_string());
    }
    let metas = [
        format!("linux-image-{kernel}-cloud-amd64"),
        "linux-image-cloud-amd64".to_string(),
    ];
    for attempt in 0..2 {
        for meta in &metas {
            // apt-cache fails for a name it does not know: just not this one.
            let out = Command::new("apt-cache")
                .args(["depends", meta])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .context("could not run apt-cache")?;
            if let Some(p) = image_dependency(&String::from_utf8_lossy(&out.stdout), kernel) {
                return Ok(p);
            }
        }
        if attempt == 0 {
            // The package lists may be missing or older than the mirror.
            println!("no cloud kernel {kernel} in the apt lists");
            apt_update()?;
        }
    }
    bail!(
        "no Debian cloud kernel {kernel} in the apt sources ({} depend on none); give a full \
         package name (`apt-cache search linux-image | grep cloud` lists them)",
        metas.join(" and ")
    )
}

fn apt_update() -> Result<()> {
    println!("running apt-get update ...");
    let log = util::workspace_root().join("target/xtask/apt-update.log");
    logged(
        Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=300", "update", "-q"]),
        &log,
    )?;
    Ok(())
}

/// From `apt-cache depends META`: the first `linux-image-KERNEL.*` it
/// depends on (`6.1` must not take `6.12`).
fn image_dependency(depends: &str, kernel: &str) -> Option<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| {
            p.strip_prefix("linux-image-")
                .and_then(|v| v.strip_prefix(kernel))
                .is_some_and(|rest| rest.starts_with(['.', '-', '+']))
                && !p.ends_with("-dbg")
        })
        .map(str::to_string)
}

/// Downloads and unpacks the package once; returns where it is unpacked.
fn fetch(package: &str, dir: &Path) -> Result<PathBuf> {
    let unpacked = dir.join("kernels").join(package);
    let marker = unpacked.join(".unpacked");
    if marker.is_file() {
        return Ok(unpacked);
    }
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    print!("downloading {package} ... ");
    std::io::stdout().flush()?;
    let log = dir.join("download.log");
    let took = logged(
        Command::new("apt-get")
            .current_dir(&debs)
            // Root's apt drops to _apt for downloads, which cannot write here.
            .args(["-o", "APT::Sandbox::User=root", "download", package]),
        &log,
    )
    .with_context(|| format!("downloading {package}"))?;
    println!("done ({})", util::human(took));
    let deb = std::fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                debs.display()
            )
        })?;
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)?;
    }
    std::fs::create_dir_all(&unpacked)?;
    capture(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    std::fs::remove_file(&deb)?;
    std::fs::write(&marker, b"")?;
    Ok(unpacked)
}

/// `boot/vmlinuz-*` and `lib/modules/RELEASE` (`usr/lib/modules` in
/// merged-/usr packages).
fn kernel_files(unpacked: &Path) -> Result<(PathBuf, PathBuf)> {
    let only = |dir: &Path, prefix: &str| -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
    };
    let vmlinuz = only(&unpacked.join("boot"), "vmlinuz-")
        .with_context(|| format!("no boot/vmlinuz-* in {}", unpacked.display()))?;
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .find_map(|d| only(&unpacked.join(d), ""))
        .with_context(|| format!("no lib/modules/* in {}", unpacked.display()))?;
    Ok((vmlinuz, modules))
}

// --- Modules -------------------------------------------------------------------

/// `MODULES` and what they depend on, dependencies first, as (name, file);
/// built-in ones are skipped. The packages ship no modules.dep (depmod makes
/// it on install), so dependencies come from each module's `.modinfo`.
fn module_load_order(modules_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = HashMap::new();
    index_modules(&modules_dir.join("kernel"), &mut files)?;
    let builtin: HashSet<String> = std::fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for m in MODULES {
        visit(m, &files, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    files: &HashMap<String, PathBuf>,
    builtin: &HashSet<String>,
    seen: &mut HashSet<String>,
    order: &mut Vec<(String, PathBuf)>,
) -> Result<()> {
    let name = name.replace('-', "_");
    if !seen.insert(name.clone()) || builtin.contains(&name) {
        return Ok(());
    }
    let file = files
        .get(&name)
        .with_context(|| format!("kernel module {name} is neither a module file nor built in"))?;
    let bytes = module_bytes(file)?;
    for dep in modinfo_depends(&bytes) {
        visit(&dep, files, builtin, seen, order)?;
    }
    order.push((name, file.clone()));
    Ok(())
}

fn index_modules(dir: &Path, files: &mut HashMap<String, PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(n) = path.file_name().and_then(|n| n.to_str())
            && n.contains(".ko")
        {
            files.insert(module_name(n), path);
        }
    }
    Ok(())
}

/// "kernel/net/sched/cls_bpf.ko.xz" -> "cls_bpf" (modprobe's spelling).
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split(".ko").next().unwrap_or(base).replace('-', "_")
}

/// The module's ELF, decompressed (Debian's 6.12 modules are .ko.xz).
fn module_bytes(file: &Path) -> Result<Vec<u8>> {
    let name = file.to_string_lossy();
    if name.ends_with(".ko") {
        return std::fs::read(file).with_context(|| format!("reading {name}"));
    }
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".gz") {
        "gzip"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        bail!("{name}: unknown module compression");
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {tool} to decompress {name}"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The `depends=a,b` string of a module's `.modinfo` section (NUL-separated
/// `key=value` strings).
fn modinfo_depends(elf: &[u8]) -> Vec<String> {
    elf.split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

// --- The initramfs -------------------------------------------------------------

fn build_initramfs(work: &Path, tcpmon: &Path, modules_dir: &Path) -> Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;

    write_file(&root.join("init"), INIT.as_bytes(), 0o755)?;
    copy_into(&root, Path::new("/bin/busybox"), "bin/busybox")?;
    // Under /usr/local so busybox's applets (in /bin, /sbin) do not shadow
    // them; the script puts /usr/local first on PATH.
    copy_with_libraries(&root, tcpmon, "usr/local/bin/tcpmon")?;
    // Debug info is most of the binary (60 MB in a debug build), and the
    // guest unpacks the initramfs with an emulated CPU.
    capture(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(root.join("usr/local/bin/tcpmon")),
    )?;
    // libpcap, which tcpmon opens only for filter expressions (the guest
    // script points TCPMON_LIBPCAP at it), so the kernel's filter path is
    // verified on the guest's kernel too.
    let libpcap = [
        "/usr/lib/x86_64-linux-gnu/libpcap.so.0.8",
        "/usr/lib/libpcap.so.0.8",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.is_file())
    .context("libpcap is not installed (apt-get install libpcap0.8)")?;
    copy_with_libraries(&root, libpcap, "usr/local/lib/libpcap.so.0.8")?;
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("iproute2's ip is not installed")?;
    copy_with_libraries(&root, ip, "usr/local/sbin/ip")?;
    // iproute2 keeps named namespaces in /var/run/netns.
    std::fs::create_dir_all(root.join("var"))?;
    std::os::unix::fs::symlink("../run", root.join("var/run"))?;

    let mods = root.join("modules");
    std::fs::create_dir_all(&mods)?;
    let mut order = String::new();
    for (name, file) in module_load_order(modules_dir)? {
        write_file(
            &mods.join(format!("{name}.ko")),
            &module_bytes(&file)?,
            0o644,
        )?;
        order.push_str(&name);
        order.push('\n');
    }
    write_file(&mods.join("order"), order.as_bytes(), 0o644)?;

    // newc is the format the kernel unpacks; uncompressed, since the kernel
    // unpacks that fastest and it is only a few megabytes.
    let cpio = work.join("initramfs.cpio");
    let list = capture(Command::new("find").arg(".").current_dir(&root))?;
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0", "-O"])
        .arg(&cpio)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .spawn()
        .context("could not start cpio")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(list.as_bytes())?;
    if !child.wait()?.success() {
        bail!("cpio failed to pack {}", root.display());
    }
    Ok(cpio)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies `src` (following symlinks) to `root/dest`.
fn copy_into(root: &Path, src: &Path, dest: &str) -> Result<()> {
    let to = root.join(dest);
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(src, &to)
        .with_context(|| format!("copying {} into the initramfs", src.display()))?;
    Ok(())
}

/// A dynamically linked program with the libraries `ldd` resolves and the
/// dynamic loader, each at the path the host has it, so the loader finds them
/// by its default search path.
fn copy_with_libraries(root: &Path, program: &Path, dest: &str) -> Result<()> {
    copy_into(root, program, dest)?;
    let listing = capture(Command::new("ldd").arg(program))?;
    for lib in ldd_paths(&listing) {
        let rel = lib.trim_start_matches('/');
        if !root.join(rel).exists() {
            copy_into(root, Path::new(&lib), rel)?;
        }
    }
    Ok(())
}

/// The absolute paths in `ldd` output: "libc.so.6 => /lib/.../libc.so.6
/// (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has none.
fn ldd_paths(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=>").map_or(l, |(_, p)| p.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

// --- Booting -------------------------------------------------------------------

fn boot(vmlinuz: &Path, initramfs: &Path, log: &Path) -> Result<GuestResult> {
    let mut cmd = Command::new("qemu-system-x86_64");
    // The root file system lives in RAM, and verifying the programs with
    // the flow cache takes the kernel tens of MB: room to spare, so that a
    // slow run is never a run short of memory.
    cmd.args(["-machine", "accel=tcg", "-m", "1G", "-smp", "2"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-display",
            "none",
            "-vga",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-nic",
            "none",
            "-no-reboot",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {}", util::display(&cmd));
    let mut child = cmd.spawn().context("could not start qemu-system-x86_64")?;

    // Lines from QEMU's stdout (the serial console) and stderr, in order of
    // arrival, through one channel so the timeout can interrupt the wait.
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().expect("piped"));
    let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().expect("piped"));
    for stream in [stdout, stderr] {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(|l| l.ok()) {
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if tx.send(line).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);

    let mut file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let deadline = Instant::now() + TIMEOUT;
    let mut console = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(file, "{line}")?;
                if let Some(report) = report_of(&line) {
                    println!("  {report}");
                }
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                writeln!(file, "[xtask: QEMU killed after {}s]", TIMEOUT.as_secs())?;
                break;
            }
        }
    }
    let status = child.wait()?;
    for r in readers {
        let _ = r.join();
    }
    if !timed_out && !status.success() {
        writeln!(file, "[xtask: QEMU exited with {status}]")?;
    }
    let mut result = parse_console(&console);
    result.timed_out = timed_out;
    result.log = log.to_path_buf();
    Ok(result)
}

/// The guest's own lines, from where they start (kernel messages may share
/// the line).
fn report_of(line: &str) -> Option<&str> {
    line.find("vm-test: ").map(|i| &line[i..])
}

fn parse_console(lines: &[String]) -> GuestResult {
    let mut r = GuestResult {
        release: String::new(),
        passes: 0,
        failures: Vec::new(),
        done: false,
        timed_out: false,
        log: PathBuf::new(),
    };
    for report in lines.iter().filter_map(|l| report_of(l)) {
        let body = &report["vm-test: ".len()..];
        if body.starts_with("PASS ") {
            r.passes += 1;
        } else if let Some(f) = body.strip_prefix("FAIL ") {
            r.failures.push(f.to_string());
        } else if body.starts_with("done:") {
            r.done = true;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_package_dependency() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            image_dependency(out, "6.1").as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(image_dependency(out, "6.12"), None);
        let out =
            "linux-image-6.12-cloud-amd64\n  Depends: linux-image-6.12.117+deb12-cloud-amd64\n";
        assert_eq!(
            image_dependency(out, "6.12").as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(image_dependency(out, "6.1"), None);
    }

    #[test]
    fn ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(out),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn modinfo() {
        let elf = b"\x7fELF junk\0license=GPL\0depends=nf_conntrack,libcrc32c\0name=x\0";
        assert_eq!(modinfo_depends(elf), ["nf_conntrack", "libcrc32c"]);
        assert!(modinfo_depends(b"\0depends=\0name=veth\0").is_empty());
        assert_eq!(module_name("kernel/net/sched/cls_bpf.ko.xz"), "cls_bpf");
        assert_eq!(module_name("kernel/x/nf-nat.ko"), "nf_nat");
    }

    #[test]
    fn console() {
        let lines: Vec<String> = [
            "[    1.0] random kernel line",
            "vm-test: PASS module veth loaded",
            "[    2.0] veth: msg vm-test: PASS lo-tc: fetched",
            "vm-test: FAIL lo-tc: 127.0.0.1:8081: wanted RESET",
            "vm-test: done: 2 checks passed, 1 failed",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = parse_console(&lines);
        assert_eq!(r.passes, 2);
        assert_eq!(r.failures.len(), 1);
        assert!(r.done && !r.passed());
        let r = parse_console(&lines[..3]);
        assert!(!r.done && !r.passed());
    }
}
