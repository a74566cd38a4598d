//! A model bundle as an ONNX model: its layers ([`crate::model::layers`]) as standard ONNX
//! operators (opset [`OPSET`]), a dynamic batch axis, probabilities out, and the bundle's facts
//! as metadata ([`super::metadata`]).

use anyhow::{Result, bail};

use super::graph::{Attr, Dim, Graph};
use super::proto::tensor_proto::DataType;
use super::proto::{ModelProto, OperatorSetIdProto};
use super::quantize::{self, Ranges};
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
    /// Quantize to INT8 (QDQ) with these calibrated activation ranges
    /// ([`super::quantize::calibrate`]); `None` writes float32.
    pub int8: Option<Ranges>,
}

/// A value in the graph and, when it has just been through QuantizeLinear → DequantizeLinear,
/// its scale (what a following conv's int32 bias is scaled by).
struct Val {
    name: String,
    scale: Option<f32>,
}

/// Walks the layers, adding operators (and QDQ pairs when quantizing).
struct Emitter<'a> {
    g: Graph,
    ranges: Option<std::slice::Iter<'a, (f32, f32)>>,
    /// Clip's 0 and 6, one pair of constants for every ReLU6 of the graph.
    relu6_bounds: Option<(String, String)>,
}

/// The ONNX model of `bundle`.
pub fn to_onnx(bundle: &ModelBundle, opts: &ExportOptions) -> Result<ModelProto> {
    let meta = &bundle.meta;
    let side = meta.image_size as usize;
    let classes = meta.classes.len();
    let layers = bundle.model.layers();
    let mut e = Emitter {
        g: Graph::new(&format!("flora_{}", meta.arch.as_str())),
        ranges: opts.int8.as_ref().map(|r| r.0.iter()),
        relu6_bounds: None,
    };
    let batch = Dim::Named("batch");
    let x = if opts.with_preprocess {
        e.g.input(
            INPUT,
            DataType::Uint8,
            &[
                batch.clone(),
                Dim::Fixed(side),
                Dim::Fixed(side),
                Dim::Fixed(3),
            ],
        );
        normalise_in_graph(&mut e.g, bundle)
    } else {
        e.g.input(
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
    let x = e.quantized(x)?;
    let x = e.layers(&layers, x)?;
    if e.ranges.as_mut().is_some_and(|r| r.next().is_some()) {
        bail!("the calibration ranges do not match this model's layers");
    }
    let mut g = e.g;
    g.node_into("Softmax", &[&x.name], &[("axis", Attr::Int(1))], OUTPUT);
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
        metadata_props: super::metadata::props(meta, opts.with_preprocess, opts.int8.is_some()),
        ..Default::default()
    })
}

/// uint8 NHWC to normalised float NCHW: `x * (1 / (255 std)) - mean / std`, the same f32
/// arithmetic as [`crate::data::imaging::Normalization::write_chw`].
fn normalise_in_graph(g: &mut Graph, bundle: &ModelBundle) -> String {
    let n = &bundle.meta.normalization;
    let (scale, shift) = n.affine();
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

impl Emitter<'_> {
    /// `x` through `act`.
    fn activation(&mut self, x: String, act: Act) -> String {
        match act {
            Act::None => x,
            Act::Relu => self.g.node("Relu", &[&x], &[]),
            Act::Relu6 => {
                let g = &mut self.g;
                let (lo, hi) = self.relu6_bounds.get_or_insert_with(|| {
                    (
                        g.constant("zero", &[], &[0.0]),
                        g.constant("six", &[], &[6.0]),
                    )
                });
                let (lo, hi) = (lo.clone(), hi.clone());
                self.g.node("Clip", &[&x, &lo, &hi], &[])
            }
        }
    }

    /// Whether the QDQ pair that follows does `act` by itself: its range starts at 0 (zero
    /// point 0, so QuantizeLinear saturates negatives to 0) and, for ReLU6, ends at most at 6.
    /// Such an activation is left out, as ONNX Runtime's `quantize_static` does, which lets the
    /// runtime fuse the conv and its QDQ pairs into one integer conv. The result is the same.
    fn saturates(&self, act: Act) -> bool {
        let next = self.ranges.as_ref().and_then(|r| r.clone().next());
        match (act, next) {
            (Act::None, _) | (_, None) => false,
            (Act::Relu, Some(&(lo, _))) => lo >= 0.0,
            (Act::Relu6, Some(&(lo, hi))) => lo >= 0.0 && hi <= 6.0,
        }
    }

    /// `x` through a QDQ pair at the next calibrated range, when quantizing.
    fn quantized(&mut self, x: String) -> Result<Val> {
        let Some(ranges) = self.ranges.as_mut() else {
            return Ok(Val {
                name: x,
                scale: None,
            });
        };
        let Some(&range) = ranges.next() else {
            bail!("the calibration ranges do not match this model's layers");
        };
        let (name, scale) = quantize::qdq(&mut self.g, &x, range);
        Ok(Val {
            name,
            scale: Some(scale),
        })
    }

    /// A weight (float, or int8 behind a DequantizeLinear when the input is quantized) and its
    /// bias (float, or int32).
    fn weights(
        &mut self,
        x: &Val,
        w: &[f32],
        dims: &[usize],
        axis: usize,
        bias: &[f32],
    ) -> (String, String) {
        let g = &mut self.g;
        match x.scale {
            Some(s) => {
                let (w, scales) = quantize::int8_weights(g, w, dims, axis);
                (w, quantize::int32_bias(g, bias, s, &scales))
            }
            None => (
                g.constant("w", dims, w),
                g.constant("b", &[bias.len()], bias),
            ),
        }
    }

    /// Appends `layers` after the value `x`; returns the last value (the logits).
    fn layers(&mut self, layers: &[Layer], mut x: Val) -> Result<Val> {
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
                    let (w, b) = self.weights(&x, weight, &dims, 0, bias);
                    let (k, s, p) = (*k as i64, *stride as i64, (*k / 2) as i64);
                    let y = self.g.node(
                        "Conv",
                        &[&x.name, &w, &b],
                        &[
                            ("kernel_shape", Attr::Ints(vec![k, k])),
                            ("strides", Attr::Ints(vec![s, s])),
                            ("pads", Attr::Ints(vec![p, p, p, p])),
                            ("group", Attr::Int(*groups as i64)),
                        ],
                    );
                    let y = match self.saturates(*act) {
                        true => y,
                        false => self.activation(y, *act),
                    };
                    self.quantized(y)?
                }
                Layer::MaxPool2 => {
                    let y = self.g.node(
                        "MaxPool",
                        &[&x.name],
                        &[
                            ("kernel_shape", Attr::Ints(vec![2, 2])),
                            ("strides", Attr::Ints(vec![2, 2])),
                        ],
                    );
                    self.quantized(y)?
                }
                Layer::Block { inner, residual } => {
                    let input = x.name.clone();
                    let y = self.layers(inner, x)?;
                    if *residual {
                        let sum = self.g.node("Add", &[&input, &y.name], &[]);
                        self.quantized(sum)?
                    } else {
                        y
                    }
                }
                Layer::GlobalAvgPool => {
                    let y = self.g.node("GlobalAveragePool", &[&x.name], &[]);
                    let y = self.g.node("Flatten", &[&y], &[("axis", Attr::Int(1))]);
                    self.quantized(y)?
                }
                Layer::Linear { weight, bias } => {
                    let classes = bias.len();
                    if classes == 0 || weight.len() % classes != 0 {
                        bail!("the classifier's weights do not match its {classes} classes");
                    }
                    let dims = [weight.len() / classes, classes];
                    let (w, b) = self.weights(&x, weight, &dims, 1, bias);
                    let y = self.g.node("Gemm", &[&x.name, &w, &b], &[]);
                    Val {
                        name: y,
                        scale: None,
                    }
                }
            };
        }
        Ok(x)
    }
}
