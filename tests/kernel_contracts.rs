//! Every launcher's declaration (`flexlora::ops::contract`) against the WGSL it dispatches, with
//! naga and no GPU: the storage bindings each entry point uses (number, name, read or
//! read-write; none missing, none extra), its uniform `Params` struct (size, field names,
//! offsets, types) against the Rust mirror, and the constants both sides rely on. Also: every
//! entry point in `shaders/` has a declaration, and WGSL that has to be copied between shaders
//! (WGSL has no imports) is byte-identical and agrees with the Rust tables it mirrors.

use std::collections::{BTreeMap, BTreeSet};

use flexlora::ops::contract::{self, Access, Contract, ParamsLayout};
use flexlora::quant::nf4::{NF4_CODE, NF4_MIDPOINTS};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Expression, Literal, Module, Scalar, ScalarKind, StorageAccess, TypeInner};

fn parse(shader: &flexlora::shaders::Shader) -> (Module, ModuleInfo) {
    let module =
        naga::front::wgsl::parse_str(shader.source).unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(shader.source)));
    (module, info)
}

fn scalar_name(module: &Module, ty: naga::Handle<naga::Type>) -> String {
    match module.types[ty].inner {
        TypeInner::Scalar(Scalar { kind: ScalarKind::Uint, width: 4 }) => "u32".into(),
        TypeInner::Scalar(Scalar { kind: ScalarKind::Sint, width: 4 }) => "i32".into(),
        TypeInner::Scalar(Scalar { kind: ScalarKind::Float, width: 4 }) => "f32".into(),
        ref other => format!("{other:?} (not a 4-byte scalar; the Rust mirror holds only u32, i32 and f32)"),
    }
}

/// A global `const`'s or `override` default's value as u32 (integers and bools only).
fn literal_u32(module: &Module, expr: naga::Handle<Expression>) -> Option<u32> {
    match module.global_expressions[expr] {
        Expression::Literal(Literal::U32(v)) => Some(v),
        Expression::Literal(Literal::I32(v)) => u32::try_from(v).ok(),
        Expression::Literal(Literal::AbstractInt(v)) => u32::try_from(v).ok(),
        Expression::Literal(Literal::Bool(b)) => Some(b as u32),
        _ => None,
    }
}

/// The value of the WGSL `const` or `override` (its default) called `name`.
fn wgsl_value(module: &Module, name: &str) -> Option<u32> {
    let named = |n: &Option<String>| n.as_deref() == Some(name);
    if let Some((_, c)) = module.constants.iter().find(|(_, c)| named(&c.name)) {
        return literal_u32(module, c.init);
    }
    let (_, o) = module.overrides.iter().find(|(_, o)| named(&o.name))?;
    literal_u32(module, o.init?)
}

/// Everything wrong with one declaration, as lines naming the shader, entry point and binding.
fn check(c: &Contract, module: &Module, info: &ModuleInfo) -> Vec<String> {
    let at = format!("{}:{}", c.shader.name, c.entry);
    let mut errors = Vec::new();
    let Some(index) = module.entry_points.iter().position(|ep| ep.name == c.entry) else {
        return vec![format!("{at}: declared in ops::contract but the shader has no such entry point")];
    };
    let uses = info.get_entry_point(index);

    let mut declared = BTreeSet::new();
    for b in c.bindings {
        if !declared.insert(b.binding) {
            errors.push(format!("{at}: binding {} declared twice", b.binding));
        }
    }
    let mut used_storage = BTreeMap::new();
    let mut uniform = None;
    for (handle, var) in module.global_variables.iter() {
        if uses[handle].is_empty() {
            continue;
        }
        let name = var.name.clone().unwrap_or_default();
        match (var.space, &var.binding) {
            (AddressSpace::Storage { access }, Some(rb)) => {
                if rb.group != 0 {
                    errors.push(format!("{at}: `{name}` is in group {}; the engine binds group 0 only", rb.group));
                }
                let acc = if access.contains(StorageAccess::STORE) { Access::ReadWrite } else { Access::Read };
                used_storage.insert(rb.binding, (name, acc));
            }
            (AddressSpace::Uniform, Some(rb)) => {
                if (rb.group, rb.binding) != (0, 0) {
                    errors.push(format!(
                        "{at}: uniform `{name}` is at group {} binding {}; the engine binds Params at 0/0",
                        rb.group, rb.binding
                    ));
                }
                uniform = Some(var.ty);
            }
            (space @ (AddressSpace::Storage { .. } | AddressSpace::Uniform | AddressSpace::Handle), _) => {
                errors.push(format!("{at}: `{name}` ({space:?}) is a resource the engine does not bind"));
            }
            _ => {}
        }
    }

    // Storage bindings: the declared ones are exactly the ones the entry point uses.
    for b in c.bindings {
        match used_storage.get(&b.binding) {
            None => errors.push(format!(
                "{at}: the launcher binds `{}` at binding {}, but the entry point uses no storage buffer there \
                 (wgpu would reject the bind group)",
                b.name, b.binding
            )),
            Some((name, acc)) => {
                if name != b.name {
                    errors.push(format!("{at}: binding {} is `{name}` in WGSL but `{}` in the launcher", b.binding, b.name));
                }
                if *acc != b.access {
                    errors.push(format!("{at}: binding {} `{name}` is {acc:?} in WGSL but {:?} in the launcher", b.binding, b.access));
                }
            }
        }
    }
    for (binding, (name, _)) in &used_storage {
        if !declared.contains(binding) {
            errors.push(format!("{at}: the entry point uses `{name}` at binding {binding}, which the launcher does not bind"));
        }
    }

    // The uniform Params struct against its Rust mirror.
    match uniform {
        None => errors.push(format!("{at}: uses no uniform Params at binding 0, but every dispatch binds one there")),
        Some(ty) => errors.extend(check_params(&at, module, ty, &c.params)),
    }

    // Constants both sides use.
    for &(name, value) in c.shared {
        match wgsl_value(module, name) {
            None => errors.push(format!("{at}: no integer WGSL `const` or `override` named `{name}` (the launcher uses {name} = {value})")),
            Some(v) if v != value => errors.push(format!("{at}: {name} is {v} in WGSL but {value} in Rust")),
            Some(_) => {}
        }
    }
    errors
}

fn check_params(at: &str, module: &Module, ty: naga::Handle<naga::Type>, rust: &ParamsLayout) -> Vec<String> {
    let wgsl_name = module.types[ty].name.clone().unwrap_or_default();
    let TypeInner::Struct { members, span } = &module.types[ty].inner else {
        return vec![format!("{at}: the uniform at binding 0 is not a struct")];
    };
    let mut errors = Vec::new();
    let who = format!("{at}: WGSL `{wgsl_name}` vs Rust `{}`", rust.name);
    if *span as usize != rust.size {
        errors.push(format!("{who}: {span} bytes in WGSL, {} in Rust", rust.size));
    }
    if members.len() != rust.fields.len() {
        errors.push(format!("{who}: {} fields in WGSL, {} in Rust", members.len(), rust.fields.len()));
    }
    for (m, f) in members.iter().zip(rust.fields) {
        let (name, ty) = (m.name.clone().unwrap_or_default(), scalar_name(module, m.ty));
        if (name.as_str(), m.offset as usize, ty.as_str()) != (f.name, f.offset, f.ty) {
            errors.push(format!(
                "{who}: field `{name}: {ty}` at offset {} in WGSL, `{}: {}` at offset {} in Rust",
                m.offset, f.name, f.ty, f.offset
            ));
        }
    }
    errors
}

#[test]
fn every_launcher_matches_its_entry_point() {
    let contracts = contract::all();
    let mut errors = Vec::new();
    let mut parsed = BTreeMap::new();
    for c in &contracts {
        let (module, info) = parsed.entry(c.shader.name).or_insert_with(|| parse(c.shader));
        errors.extend(check(c, module, info));
    }
    assert!(errors.is_empty(), "{} kernel contract violation(s):\n{}", errors.len(), errors.join("\n"));
    eprintln!("{} entry points match their launchers", contracts.len());
}

#[test]
fn every_entry_point_has_a_launcher_declaration() {
    let mut declared = BTreeSet::new();
    for c in contract::all() {
        assert!(declared.insert((c.shader.name, c.entry)), "{}:{} is listed twice in ops::contract::all", c.shader.name, c.entry);
    }
    let mut missing = Vec::new();
    for shader in flexlora::shaders::ALL {
        let (module, _) = parse(shader);
        for ep in &module.entry_points {
            if !declared.contains(&(shader.name, ep.name.as_str())) {
                missing.push(format!("{}:{}", shader.name, ep.name));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "entry points without a launcher declaration (add an `Entry` and list it in ops::contract::all): {missing:?}"
    );
}

/// Blocks between `// shared: NAME` and `// end shared: NAME` are copies WGSL forces (it has no
/// imports): each name's copies must be byte-identical.
#[test]
fn shared_wgsl_blocks_are_identical() {
    let mut blocks: BTreeMap<String, Vec<(&str, String)>> = BTreeMap::new();
    for shader in flexlora::shaders::ALL {
        let mut rest = shader.source;
        while let Some(start) = rest.find("// shared: ") {
            let after = &rest[start + "// shared: ".len()..];
            let name = after.split_whitespace().next().unwrap_or_default().to_string();
            let end_marker = format!("// end shared: {name}");
            let end = after.find(&end_marker).unwrap_or_else(|| panic!("{}: `// shared: {name}` has no `{end_marker}`", shader.name));
            blocks.entry(name).or_default().push((shader.name, after[..end].to_string()));
            rest = &after[end + end_marker.len()..];
        }
    }
    for want in ["nf4_codebook", "index_1d", "pcg_hash"] {
        let copies = blocks.get(want).map_or(0, Vec::len);
        assert!(copies >= 2, "expected the shared block `{want}` in at least two shaders, found {copies}");
    }
    for (name, copies) in &blocks {
        assert!(copies.len() >= 2, "shared block `{name}` has one copy ({}): drop its markers or copy it", copies[0].0);
        let (first_file, first) = &copies[0];
        for (file, text) in &copies[1..] {
            assert_eq!(text, first, "shared block `{name}` differs between {first_file} and {file}");
        }
    }
}

/// The NF4 codebook in the shaders is the Rust one (`quant::nf4`), bit for bit.
#[test]
fn wgsl_nf4_codebook_matches_rust() {
    let array = |module: &Module, name: &str| -> Vec<u32> {
        let (_, c) = module.constants.iter().find(|(_, c)| c.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no const {name}"));
        let Expression::Compose { ref components, .. } = module.global_expressions[c.init] else {
            panic!("{name} is not an array literal")
        };
        components.iter().map(|&e| literal_u32(module, e).unwrap_or_else(|| panic!("{name}: not a u32 literal"))).collect()
    };
    let code: Vec<u32> = NF4_CODE.iter().map(|v| v.to_bits()).collect();
    let mid: Vec<u32> = NF4_MIDPOINTS.iter().map(|v| v.to_bits()).collect();
    for shader in [&flexlora::shaders::MATMUL_NF4, &flexlora::shaders::QUANT_NF4] {
        let (module, _) = parse(shader);
        assert_eq!(array(&module, "CODE_BITS"), code, "{}: CODE_BITS differs from quant::nf4::NF4_CODE", shader.name);
        if shader.name == "quant_nf4.wgsl" {
            assert_eq!(array(&module, "MID_BITS"), mid, "{}: MID_BITS differs from quant::nf4::NF4_MIDPOINTS", shader.name);
        }
    }
}
