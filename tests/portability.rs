//! Every shader in `shaders/` parses and validates with naga and translates, entry point by entry
//! point, to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (GL). No GPU needed. SPIR-V is
//! also checked by `spirv-val` when it is installed (and must be under CI=true).

use std::process::Command;

use naga::back::{glsl, hlsl, msl, pipeline_constants::process_overrides, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::ShaderStage;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

#[test]
fn every_shader_validates_and_translates_to_every_backend() {
    let have_spirv_val = Command::new("spirv-val").arg("--version").output().is_ok();
    if !have_spirv_val {
        assert!(!in_ci(), "CI=true but spirv-val is missing (apt-get install spirv-tools)");
        eprintln!("*** spirv-val not installed: SPIR-V is translated but not validated ***");
    }
    let dir = std::env::temp_dir().join(format!("flexlora-spv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut checked = 0;
    for shader in flexlora::shaders::ALL {
        let module =
            naga::front::wgsl::parse_str(shader.source).unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
        assert!(!module.entry_points.is_empty(), "{}: no entry points", shader.name);
        for ep in &module.entry_points {
            let name = format!("{}:{}", shader.name, ep.name);
            // Overrides keep their WGSL defaults here; the engine passes the same names at run time.
            let (module, info) =
                process_overrides(&module, &info, Some((ShaderStage::Compute, &ep.name)), &naga::back::PipelineConstants::default())
                    .unwrap_or_else(|e| panic!("{name}: overrides: {e}"));

            let spv_opts = spv::Options { lang_version: (1, 3), ..Default::default() };
            let spv_pipe = spv::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: ep.name.clone() };
            let words = spv::write_vec(&module, &info, &spv_opts, Some(&spv_pipe)).unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));
            if have_spirv_val {
                let path = dir.join(format!("{}_{}.spv", shader.name.trim_end_matches(".wgsl"), ep.name));
                std::fs::write(&path, bytemuck::cast_slice::<u32, u8>(&words)).unwrap();
                let out = Command::new("spirv-val").args(["--target-env", "vulkan1.1"]).arg(&path).output().unwrap();
                assert!(out.status.success(), "{name}: spirv-val: {}", String::from_utf8_lossy(&out.stderr));
            }

            let msl_pipe = msl::PipelineOptions { entry_point: Some((ShaderStage::Compute, ep.name.clone())), ..Default::default() };
            msl::write_string(&module, &info, &msl::Options::default(), &msl_pipe).unwrap_or_else(|e| panic!("{name}: MSL: {e}"));

            let hlsl_opts = hlsl::Options { shader_model: hlsl::ShaderModel::V5_1, ..Default::default() };
            let hlsl_pipe = hlsl::PipelineOptions { entry_point: Some((ShaderStage::Compute, ep.name.clone())) };
            let mut hlsl_out = String::new();
            hlsl::Writer::new(&mut hlsl_out, &hlsl_opts, &hlsl_pipe)
                .write(&module, &info, None)
                .unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));

            let glsl_opts = glsl::Options { version: glsl::Version::Embedded { version: 310, is_webgl: false }, ..Default::default() };
            let glsl_pipe = glsl::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: ep.name.clone(), multiview: None };
            let mut glsl_out = String::new();
            glsl::Writer::new(&mut glsl_out, &module, &info, &glsl_opts, &glsl_pipe, naga::proc::BoundsCheckPolicies::default())
                .and_then(|mut w| w.write())
                .unwrap_or_else(|e| panic!("{name}: GLSL: {e}"));
            checked += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{checked} entry points translated to SPIR-V, MSL, HLSL and GLSL");
    assert!(checked >= 20, "expected every op's entry points, saw {checked}");
}

/// The registry lists every file in shaders/, so no kernel escapes these checks.
#[test]
fn registry_lists_every_shader_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    let mut listed: Vec<String> = flexlora::shaders::ALL.iter().map(|s| s.name.to_string()).collect();
    on_disk.sort();
    listed.sort();
    assert_eq!(on_disk, listed);
}
