//! Prints how many instructions the kernel's verifier walked for each of
//! tcpmon's programs, without and with a filter of the given length
//! (`verifier_cost [FILTER_INSNS [KERNEL_LOG_LEVEL [OBJECT]]]`, the level
//! as `--kernel-log` takes it; OBJECT another build of the kernel object
//! instead of the embedded one): the load time of every live run.
use tcpmon::backend::ebpf::{LoadOptions, OBJECT, load_object};
use tcpmon_common::cbpf::Insn;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(0), |s| s.parse())?;
    let kernel_log = std::env::args()
        .nth(2)
        .map_or(Ok(log::LevelFilter::Off), |s| s.parse())?;
    // `ret #65535` padded with jumps-to-next: n instructions.
    let filter = (n > 0).then(|| {
        let mut p = vec![
            Insn {
                code: 0x05,
                jt: 0,
                jf: 0,
                k: 0
            };
            n - 1
        ];
        p.push(Insn {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 65535,
        });
        p
    });
    let object = match std::env::args().nth(3) {
        Some(path) => std::fs::read(path)?,
        None => OBJECT.to_vec(),
    };
    let t = std::time::Instant::now();
    let ebpf = load_object(
        &object,
        &LoadOptions {
            filter,
            kernel_log,
            ..LoadOptions::default()
        },
    )?;
    println!("loaded in {:?}", t.elapsed());
    for (name, prog) in ebpf.programs() {
        if let Ok(info) = prog.info() {
            println!(
                "{name}: {} instructions verified, {} bytes jitted",
                info.verified_instruction_count().unwrap_or(0),
                info.size_jitted()
            );
        }
    }
    Ok(())
}
