//! Per-operator time of one ONNX model under tract (developer tool, not part of the product).
use std::collections::BTreeMap;
use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::SimpleState;

fn main() -> TractResult<()> {
    let path = std::env::args().nth(1).expect("model path");
    let model = tract_onnx::onnx()
        .model_for_path(&path)?
        .with_input_fact(0, f32::fact([1, 1, 128, 128]).into())?;
    let plan = model.into_optimized()?.into_runnable()?;
    let mut state = SimpleState::new(&plan)?;
    let mut times: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for it in 0..30 {
        let input = Tensor::from_shape(&[1, 1, 128, 128], &vec![0.5f32; 128 * 128])?;
        state.run_plan_with_eval(tvec!(input.into()), |s, st, node, inputs| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(s, st, node, inputs);
            if it >= 10 {
                let e = times
                    .entry(format!("{} {}", node.op.name(), node.name))
                    .or_default();
                e.0 += t.elapsed().as_secs_f64() * 1e3 / 20.0;
                e.1 += 1;
            }
            r
        })?;
    }
    let mut v: Vec<_> = times.into_iter().collect();
    v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let total: f64 = v.iter().map(|x| x.1 .0).sum();
    println!("total {total:.2} ms");
    for (k, (ms, _)) in v.iter().take(25) {
        println!("{ms:8.3} {k}");
    }
    Ok(())
}
