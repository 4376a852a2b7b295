//! Every WGSL shader in `shaders/` must parse, validate with no optional capabilities, and
//! translate, entry point by entry point, to SPIR-V, MSL and HLSL with naga: the back ends
//! wgpu uses on Vulkan, Metal and DirectX 12. This catches shaders that work on the machine
//! they were written on but would fail to build a pipeline on another platform.
//!
//! Each kernel is checked as the host builds it: the prelude, then the lane merges with or
//! without subgroup operations (common/subgroups_on.wgsl, common/subgroups_off.wgsl), then the
//! parts it shares with other kernels (`common_parts`), then the kernel. The first must pass with no optional capabilities and the oldest targets; the
//! second with the subgroup capability and the oldest targets that have subgroup operations.
//!
//! Overrides (`override` constants) are resolved the way wgpu does it at pipeline creation:
//! `process_overrides` per entry point, once with an empty map (so every override in our
//! shaders must have a default) and once with each set of constants the host passes
//! (`constant_sets`, as in `Kernels::new`).

use std::path::{Path, PathBuf};

use naga::back::{hlsl, msl, pipeline_constants, spv, PipelineConstants};
use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator};

/// The fewest shaders the crate ships; an empty or misplaced directory must not pass.
const MIN_SHADERS: usize = 6;

/// What a check allows and targets.
#[derive(Clone, Copy)]
struct Target {
    subgroups: bool,
    spv: (u8, u8),
    msl: (u8, u8),
    hlsl: hlsl::ShaderModel,
}

/// The oldest targets wgpu 30 can produce code for, so the check is as strict as it gets:
/// SPIR-V 1.0 (Vulkan 1.0), MSL 1.0, HLSL shader model 5.1 (DX12 through FXC).
const PLAIN: Target = Target {
    subgroups: false,
    spv: (1, 0),
    msl: (1, 0),
    hlsl: hlsl::ShaderModel::V5_1,
};

/// The oldest that have subgroup operations: SPIR-V 1.3 (GroupNonUniform), MSL 2.1 (SIMD-group
/// functions), HLSL shader model 6.0 (wave intrinsics, DXC).
const SUBGROUPS: Target = Target {
    subgroups: true,
    spv: (1, 3),
    msl: (2, 1),
    hlsl: hlsl::ShaderModel::V6_0,
};

/// What an entry point takes of the device's limits: storage buffers, and bytes of workgroup
/// storage, counting only the globals it uses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Needs {
    storage_buffers: u32,
    workgroup_bytes: u32,
}

impl Needs {
    fn max(self, other: Needs) -> Needs {
        Needs {
            storage_buffers: self.storage_buffers.max(other.storage_buffers),
            workgroup_bytes: self.workgroup_bytes.max(other.workgroup_bytes),
        }
    }
}

fn needs_of(module: &naga::Module, info: &naga::valid::ModuleInfo, ep_name: &str) -> Needs {
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .expect("a validated module lays out");
    let index = module
        .entry_points
        .iter()
        .position(|ep| ep.name == ep_name)
        .expect("the entry point is in the module");
    let uses = info.get_entry_point(index);
    let mut needs = Needs::default();
    for (handle, var) in module.global_variables.iter() {
        if uses[handle].is_empty() {
            continue;
        }
        match var.space {
            naga::AddressSpace::Storage { .. } => needs.storage_buffers += 1,
            naga::AddressSpace::WorkGroup => needs.workgroup_bytes += layouter[var.ty].size,
            _ => {}
        }
    }
    needs
}

/// Parses, validates and translates one WGSL source. Returns the entry point names and what
/// they need of a device's limits (the most any of them needs) on success, and every problem
/// found (all entry points, all back ends) on failure.
fn check_wgsl(
    name: &str,
    source: &str,
    target: Target,
    constants: &PipelineConstants,
) -> Result<(Vec<String>, Needs), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| {
        format!(
            "WGSL parse error:\n{}",
            e.emit_to_string_with_path(source, name)
        )
    })?;

    let mut validator = if target.subgroups {
        let mut v = Validator::new(ValidationFlags::all(), Capabilities::SUBGROUP);
        v.subgroup_stages(ShaderStages::COMPUTE)
            .subgroup_operations(SubgroupOperationSet::all());
        v
    } else {
        Validator::new(ValidationFlags::all(), Capabilities::empty())
    };
    let info = validator.validate(&module).map_err(|e| {
        format!(
            "validation error ({}):\n{}",
            if target.subgroups {
                "subgroups"
            } else {
                "no optional capabilities"
            },
            e.emit_to_string_with_path(source, name)
        )
    })?;

    if module.entry_points.is_empty() {
        return Err("the module has no entry points".to_string());
    }

    let mut problems = Vec::new();
    let mut entry_points = Vec::new();
    let mut needs = Needs::default();
    for ep in &module.entry_points {
        let stage = ep.stage;
        let ep_name = ep.name.as_str();
        entry_points.push(ep_name.to_string());
        let tag = format!("entry point '{ep_name}' ({stage:?})");

        // What wgpu does at pipeline creation: keep only this entry point, substitute the
        // overrides' defaults, compact, and re-validate.
        let (ep_module, ep_info) = match pipeline_constants::process_overrides(
            &module,
            &info,
            Some((stage, ep_name)),
            constants,
        ) {
            Ok(pair) => pair,
            Err(e) => {
                problems.push(format!("{tag}: resolving overrides {constants:?}: {e}"));
                continue;
            }
        };
        needs = needs.max(needs_of(&ep_module, &ep_info, ep_name));

        // SPIR-V (Vulkan).
        let spv_options = spv::Options {
            lang_version: target.spv,
            ..spv::Options::default()
        };
        let spv_pipeline = spv::PipelineOptions {
            shader_stage: stage,
            entry_point: ep_name.to_string(),
        };
        match spv::write_vec(&ep_module, &ep_info, &spv_options, Some(&spv_pipeline)) {
            Ok(words) if words.first() == Some(&0x0723_0203) => {}
            Ok(words) => problems.push(format!(
                "{tag}: SPIR-V output does not start with the SPIR-V magic ({} words)",
                words.len()
            )),
            Err(e) => problems.push(format!("{tag}: SPIR-V: {e}")),
        }

        // MSL (Metal).
        let msl_options = msl::Options {
            lang_version: target.msl,
            ..msl::Options::default()
        };
        let msl_pipeline = msl::PipelineOptions {
            entry_point: Some((stage, ep_name.to_string())),
            ..msl::PipelineOptions::default()
        };
        match msl::write_string(&ep_module, &ep_info, &msl_options, &msl_pipeline) {
            Ok((text, translation)) => {
                // Per-entry-point failures are reported here, not as an `Err`.
                for r in &translation.entry_point_names {
                    if let Err(e) = r {
                        problems.push(format!("{tag}: MSL entry point: {e}"));
                    }
                }
                if text.trim().is_empty() {
                    problems.push(format!("{tag}: MSL output is empty"));
                }
            }
            Err(e) => problems.push(format!("{tag}: MSL: {e}")),
        }

        // HLSL (DirectX 12).
        let hlsl_options = hlsl::Options {
            shader_model: target.hlsl,
            ..hlsl::Options::default()
        };
        let hlsl_pipeline = hlsl::PipelineOptions {
            entry_point: Some((stage, ep_name.to_string())),
        };
        let mut hlsl_text = String::new();
        let hlsl_result = hlsl::Writer::new(&mut hlsl_text, &hlsl_options, &hlsl_pipeline)
            .write(&ep_module, &ep_info, None);
        match hlsl_result {
            Ok(reflection) => {
                for r in &reflection.entry_point_names {
                    if let Err(e) = r {
                        problems.push(format!("{tag}: HLSL entry point: {e}"));
                    }
                }
                if hlsl_text.trim().is_empty() {
                    problems.push(format!("{tag}: HLSL output is empty"));
                }
            }
            Err(e) => problems.push(format!("{tag}: HLSL: {e}")),
        }
    }

    if problems.is_empty() {
        Ok((entry_points, needs))
    } else {
        Err(problems.join("\n"))
    }
}

/// What the host puts before every kernel (see `Kernel::new` in src/gpu/kernels.rs).
const PRELUDE: &str = include_str!("../shaders/common/prelude.wgsl");
const SUBGROUPS_ON: &str = include_str!("../shaders/common/subgroups_on.wgsl");
const SUBGROUPS_OFF: &str = include_str!("../shaders/common/subgroups_off.wgsl");
/// Run as it is, on devices with subgroups only (src/gpu/context.rs).
const PROBE: &str = "subgroup_probe.wgsl";

fn shader_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders")
}

fn wgsl_files(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read shader directory {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file() && p.extension().is_some_and(|ext| ext == "wgsl"))
        .collect();
    files.sort();
    files
}

/// The files of shaders/common/ that `Kernels::new` (src/gpu/kernels.rs, its `shader!` calls)
/// puts between the subgroup merges and the kernel. A part missing here fails this test (the
/// kernel does not compile without it); one too many fails every GPU test (as the host would
/// lack it).
fn common_parts(name: &str) -> &'static [&'static str] {
    match name {
        "stats_reduce.wgsl"
        | "stats_reduce_vec4.wgsl"
        | "stats_reduce_channels.wgsl"
        | "stats_reduce_grouped.wgsl"
        | "forward_fused.wgsl"
        | "forward_fused_vec4.wgsl" => &["fold_stats.wgsl"],
        "grad_reduce.wgsl"
        | "grad_reduce_vec4.wgsl"
        | "grad_reduce_channels.wgsl"
        | "grad_reduce_grouped.wgsl" => &["fold_sums.wgsl"],
        "apply_forward_vec4.wgsl" | "apply_backward_vec4.wgsl" => &["apply_vec4.wgsl"],
        "stats_finalize.wgsl" | "eval_finalize.wgsl" | "grad_finalize.wgsl" => {
            &["store_coeff.wgsl"]
        }
        _ => &[],
    }
}

/// The pipeline constants `Kernels::new` (src/gpu/kernels.rs) sets on each shader, besides
/// none: every variant the host can build must translate.
fn constant_sets(name: &str) -> Vec<Vec<(&'static str, f64)>> {
    match name {
        "stats_reduce_vec4.wgsl" | "grad_reduce_vec4.wgsl" => vec![vec![("RUN", 8.0)]],
        // CPU devices (lavapipe, WARP) take contiguous rows and lane records.
        "stats_reduce_channels.wgsl" | "grad_reduce_channels.wgsl" => {
            vec![
                vec![("CONTIGUOUS_ROWS", 1.0)],
                vec![("LANE_RECORDS", 1.0)],
                vec![("CONTIGUOUS_ROWS", 1.0), ("LANE_RECORDS", 1.0)],
            ]
        }
        "stats_reduce_grouped.wgsl" | "grad_reduce_grouped.wgsl" => {
            vec![vec![("LANE_RECORDS", 1.0)]]
        }
        "apply_forward_vec4.wgsl" => {
            vec![
                vec![("CHANNELS_PER_LANE", 2.0)],
                vec![("CHANNELS_PER_LANE", 4.0)],
            ]
        }
        "apply_backward.wgsl" => vec![vec![("FROZEN", 1.0)]],
        "apply_backward_vec4.wgsl" => {
            let mut sets = Vec::new();
            for frozen in [0.0, 1.0] {
                for channels in [1.0, 2.0, 4.0] {
                    sets.push(vec![("CHANNELS_PER_LANE", channels), ("FROZEN", frozen)]);
                }
            }
            sets
        }
        "forward_fused_vec4.wgsl" => vec![vec![("CHANNELS_IN_VEC4", 1.0)]],
        "grad_finalize.wgsl" => vec![vec![("ACCUMULATE", 1.0)]],
        _ => Vec::new(),
    }
}

#[test]
fn all_shaders_translate_to_spirv_msl_and_hlsl() {
    let dir = shader_dir();
    let files = wgsl_files(&dir);
    assert!(
        files.len() >= MIN_SHADERS,
        "expected at least {MIN_SHADERS} .wgsl files in {}, found {}: {files:?}",
        dir.display(),
        files.len()
    );

    let mut failures = Vec::new();
    let mut needs = Needs::default();
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let source = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) => {
                failures.push((name, format!("cannot read: {e}")));
                continue;
            }
        };
        // As the host builds it.
        let mut parts = String::new();
        for part in common_parts(&name) {
            let path = dir.join("common").join(part);
            match std::fs::read_to_string(&path) {
                Ok(text) => parts.push_str(&text),
                Err(e) => failures.push((name.clone(), format!("cannot read {part}: {e}"))),
            }
        }
        let source = format!("{parts}{source}");
        let builds = if name == PROBE {
            vec![("subgroups", source.clone(), SUBGROUPS)]
        } else {
            vec![
                ("plain", format!("{PRELUDE}{SUBGROUPS_OFF}{source}"), PLAIN),
                (
                    "subgroups",
                    format!("{PRELUDE}{SUBGROUPS_ON}{source}"),
                    SUBGROUPS,
                ),
            ]
        };
        for (variant, source, target) in builds {
            for constants in std::iter::once(PipelineConstants::default()).chain(
                constant_sets(&name)
                    .into_iter()
                    .map(|set| set.iter().map(|&(k, v)| (k.to_string(), v)).collect()),
            ) {
                match check_wgsl(&name, &source, target, &constants) {
                    Ok((entry_points, kernel_needs)) => {
                        needs = needs.max(kernel_needs);
                        eprintln!(
                            "ok   {name} ({variant}, {constants:?}): {}, {kernel_needs:?}",
                            entry_points.join(", ")
                        )
                    }
                    Err(problem) => {
                        failures.push((format!("{name} ({variant}, {constants:?})"), problem))
                    }
                }
            }
        }
    }

    if !failures.is_empty() {
        let names: Vec<&str> = failures.iter().map(|(n, _)| n.as_str()).collect();
        let details: Vec<String> = failures
            .iter()
            .map(|(n, p)| format!("--- {n} ---\n{p}"))
            .collect();
        panic!(
            "{} of {} shaders failed the portability check: {}\n\n{}",
            failures.len(),
            files.len(),
            names.join(", "),
            details.join("\n\n")
        );
    }

    // What GpuContext::required_limits promises a caller is what the kernels need, exactly:
    // less would let from_device accept a device the kernels do not fit, more would refuse
    // one they do. Workgroup bytes as naga lays the variables out; Metal pads each to 16
    // bytes (13,328 here), within the 16 KiB every Metal device has.
    let required = wgpu_batchnorm::GpuContext::required_limits();
    assert_eq!(
        needs,
        Needs {
            storage_buffers: required.max_storage_buffers_per_shader_stage,
            workgroup_bytes: required.max_compute_workgroup_storage_size,
        },
        "the kernels' needs (left) against GpuContext::required_limits (right)"
    );
}

#[test]
fn check_catches_a_broken_shader() {
    // Assigning a vec3<f32> to an f32: a type error naga's validator/front end must reject.
    let broken = r#"
@group(0) @binding(0) var<storage, read_write> data: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let v: f32 = vec3<f32>(1.0, 2.0, 3.0);
    data[gid.x] = v;
}
"#;
    let err = check_wgsl("broken.wgsl", broken, PLAIN, &PipelineConstants::default())
        .expect_err("a type error must be caught");
    assert!(
        err.contains("broken.wgsl"),
        "error should name the file: {err}"
    );

    // A shader that needs an optional capability (f64) is refused too.
    let needs_f64 = r#"
@group(0) @binding(0) var<storage, read_write> data: array<f64>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    data[gid.x] = data[gid.x] * 2.0lf;
}
"#;
    let err = check_wgsl(
        "needs_f64.wgsl",
        needs_f64,
        PLAIN,
        &PipelineConstants::default(),
    )
    .expect_err("f64 needs a capability");
    assert!(err.contains("FLOAT64"), "{err}");

    // Subgroup operations need the capability: refused in the plain check, taken in the
    // subgroup one.
    let needs_subgroups = r#"
@group(0) @binding(0) var<storage, read_write> data: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    data[gid.x] = subgroupAdd(data[gid.x]);
}
"#;
    let err = check_wgsl(
        "needs_subgroups.wgsl",
        needs_subgroups,
        PLAIN,
        &PipelineConstants::default(),
    )
    .expect_err("subgroups need a capability");
    assert!(err.contains("SUBGROUP"), "{err}");
    assert!(check_wgsl(
        "needs_subgroups.wgsl",
        needs_subgroups,
        SUBGROUPS,
        &PipelineConstants::default()
    )
    .is_ok());

    // An override with no default cannot be resolved without pipeline constants.
    let no_default = r#"
override SCALE: f32;
@group(0) @binding(0) var<storage, read_write> data: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    data[gid.x] = data[gid.x] * SCALE;
}
"#;
    let err = check_wgsl(
        "no_default.wgsl",
        no_default,
        PLAIN,
        &PipelineConstants::default(),
    )
    .expect_err("missing override value");
    assert!(err.contains("overrides"), "{err}");
    // With the constant given, as the host gives it, it resolves.
    let scale: PipelineConstants = [("SCALE".to_string(), 2.0)].into_iter().collect();
    assert!(check_wgsl("no_default.wgsl", no_default, PLAIN, &scale).is_ok());

    // And a good shader passes, so the check is not simply always failing.
    let good = r#"
override WG: u32 = 64u;
@group(0) @binding(0) var<storage, read_write> data: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x < arrayLength(&data) {
        data[gid.x] = data[gid.x] * 2.0;
    }
}
"#;
    assert_eq!(
        check_wgsl("good.wgsl", good, PLAIN, &PipelineConstants::default()),
        Ok((
            vec!["main".to_string()],
            Needs {
                storage_buffers: 1,
                workgroup_bytes: 0
            }
        ))
    );
}
