//! A model bundle as an ONNX model: its layers ([`crate::model::layers`]) as standard ONNX
//! operators (opset [`OPSET`]), a dynamic batch axis, probabilities out, and the bundle's facts
//! as metadata ([`super::metadata`]).

use anyhow::{Result, bail};

use super::graph::{Attr, Dim, Graph};
use super::proto::tensor_proto::DataType;
use super::proto::{ModelProto, OperatorSetIdProto};
use crate::model::bundle::ModelBundle;
use crate::model::layers::{Act, Layer};

/// The ONNX operator set the graph uses (ONNX 1.12+, every ONNX Runtime since 1.12).
pub const OPSET: i64 = 17;
/// The IR version that goes with [`OPSET`].
const IR_VERSION: i64 = 8;
/// The graph's input and output names (Ultralytics' names).
pub const INPUT: &str = "images";
pub const OUTPUT: &str = "output0";

/// How to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Take uint8 RGB pixels `[batch, size, size, 3]` (already resized and cropped) and
    /// normalise them inside the graph, instead of normalised float NCHW.
    pub with_preprocess: bool,
}

/// The ONNX model of `bundle`.
pub fn to_onnx(bundle: &ModelBundle, opts: &ExportOptions) -> Result<ModelProto> {
    let meta = &bundle.meta;
    let side = meta.image_size as usize;
    let classes = meta.classes.len();
    let layers = bundle.model.layers();
    let mut g = Graph::new(&format!("flora_{}", meta.arch.as_str()));
    let batch = Dim::Named("batch");
    let mut x = if opts.with_preprocess {
        g.input(
            INPUT,
            DataType::Uint8,
            &[
                batch.clone(),
                Dim::Fixed(side),
                Dim::Fixed(side),
                Dim::Fixed(3),
            ],
        );
        normalise_in_graph(&mut g, bundle)
    } else {
        g.input(
            INPUT,
            DataType::Float,
            &[
                batch.clone(),
                Dim::Fixed(3),
                Dim::Fixed(side),
                Dim::Fixed(side),
            ],
        );
        INPUT.to_string()
    };
    x = emit(&mut g, &layers, x)?;
    g.node_into("Softmax", &[&x], &[("axis", Attr::Int(1))], OUTPUT);
    g.output(OUTPUT, DataType::Float, &[batch, Dim::Fixed(classes)]);
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("flora".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(super::metadata::description(meta)),
        graph: Some(g.finish()),
        metadata_props: super::metadata::props(meta, opts),
        ..Default::default()
    })
}

/// uint8 NHWC to normalised float NCHW: `x * (1 / (255 std)) - mean / std`, the same f32
/// arithmetic as [`crate::data::imaging::Normalization::write_chw`].
fn normalise_in_graph(g: &mut Graph, bundle: &ModelBundle) -> String {
    let n = &bundle.meta.normalization;
    let scale: Vec<f32> = (0..3).map(|c| 1.0 / (255.0 * n.std[c])).collect();
    let shift: Vec<f32> = (0..3).map(|c| n.mean[c] / n.std[c]).collect();
    let scale = g.constant("scale", &[1, 3, 1, 1], &scale);
    let shift = g.constant("shift", &[1, 3, 1, 1], &shift);
    let x = g.node(
        "Cast",
        &[INPUT],
        &[("to", Attr::Int(DataType::Float as i64))],
    );
    let x = g.node(
        "Transpose",
        &[&x],
        &[("perm", Attr::Ints(vec![0, 3, 1, 2]))],
    );
    let x = g.node("Mul", &[&x, &scale], &[]);
    g.node("Sub", &[&x, &shift], &[])
}

/// Appends `layers` to the graph after the value `x`; returns the last value (logits).
fn emit(g: &mut Graph, layers: &[Layer], mut x: String) -> Result<String> {
    for layer in layers {
        x = match layer {
            Layer::Conv {
                weight,
                bias,
                cin,
                cout,
                k,
                stride,
                groups,
                act,
            } => {
                let dims = [*cout, cin / groups, *k, *k];
                let (k, s, p) = (*k as i64, *stride as i64, (*k / 2) as i64);
                let w = g.constant("w", &dims, weight);
                let b = g.constant("b", &[*cout], bias);
                let y = g.node(
                    "Conv",
                    &[&x, &w, &b],
                    &[
                        ("kernel_shape", Attr::Ints(vec![k, k])),
                        ("strides", Attr::Ints(vec![s, s])),
                        ("pads", Attr::Ints(vec![p, p, p, p])),
                        ("group", Attr::Int(*groups as i64)),
                    ],
                );
                activation(g, y, *act)
            }
            Layer::MaxPool2 => g.node(
                "MaxPool",
                &[&x],
                &[
                    ("kernel_shape", Attr::Ints(vec![2, 2])),
                    ("strides", Attr::Ints(vec![2, 2])),
                ],
            ),
            Layer::Block { inner, residual } => {
                let y = emit(g, inner, x.clone())?;
                if *residual {
                    g.node("Add", &[&x, &y], &[])
                } else {
                    y
                }
            }
            Layer::GlobalAvgPool => {
                let y = g.node("GlobalAveragePool", &[&x], &[]);
                g.node("Flatten", &[&y], &[("axis", Attr::Int(1))])
            }
            Layer::Linear { weight, bias } => {
                let classes = bias.len();
                if classes == 0 || weight.len() % classes != 0 {
                    bail!("the classifier's weights do not match its {classes} classes");
                }
                let w = g.constant("head_w", &[weight.len() / classes, classes], weight);
                let b = g.constant("head_b", &[classes], bias);
                g.node("Gemm", &[&x, &w, &b], &[])
            }
        };
    }
    Ok(x)
}

fn activation(g: &mut Graph, x: String, act: Act) -> String {
    match act {
        Act::None => x,
        Act::Relu => g.node("Relu", &[&x], &[]),
        Act::Relu6 => {
            let lo = g.constant("zero", &[], &[0.0]);
            let hi = g.constant("six", &[], &[6.0]);
            g.node("Clip", &[&x, &lo, &hi], &[])
        }
    }
}
