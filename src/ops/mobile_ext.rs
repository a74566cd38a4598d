//! MobileNetV2's training ops as a Burn backend extension: depthwise 3×3 conv, pointwise conv
//! and BatchNorm + ReLU6, on raw NCHW Flex tensors, each with a hand-written backward for
//! `Autodiff<Flex>`, so Burn's autodiff graph, optimizer and module tree drive them like any
//! built-in op. A frozen parameter (an untracked node) gets no gradient computed at all.

use std::fmt;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Flex, TensorMetadata, backend_extension};

use super::bn_act::{self, BnShape};
use super::depthwise::{self, DwShape};
use super::extension::{flex, values};
use super::phases::{Phase, timed};
use super::pointwise::{self, PwShape};

/// MobileNetV2's training ops, NCHW.
#[backend_extension(Flex, Autodiff)]
pub trait MobileNetBackend: Backend {
    /// Depthwise 3×3 conv, padding 1, no bias: `x` `[n, c, h, w]`, `weight` `[c, 1, 3, 3]`.
    fn depthwise3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self>;

    /// 1×1 conv, no bias: `x` `[n, cin, h, w]`, `weight` `[cout, cin, 1, 1]`.
    fn pointwise(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;

    /// BatchNorm with batch statistics, then ReLU6 when `relu6`: `x` `[n, c, h, w]`. Returns
    /// the output, then the batch mean and biased variance (detached).
    fn bn_act(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu6: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

fn dims4(t: &FlexTensor, what: &str) -> [usize; 4] {
    let s = t.shape();
    assert_eq!(s.num_dims(), 4, "{what} must be 4-d (NCHW)");
    [s[0], s[1], s[2], s[3]]
}

fn dw_shape(x: &FlexTensor, weight: &FlexTensor, stride: usize) -> DwShape {
    let [n, c, h, w] = dims4(x, "depthwise input");
    let ws = dims4(weight, "depthwise weight");
    assert_eq!(ws, [c, 1, 3, 3], "depthwise weight must be [c, 1, 3, 3]");
    DwShape { n, c, h, w, stride }
}

fn pw_shape(x: &FlexTensor, weight: &FlexTensor) -> PwShape {
    let [n, cin, h, w] = dims4(x, "pointwise input");
    let [cout, wcin, kh, kw] = dims4(weight, "pointwise weight");
    assert!(
        wcin == cin && kh == 1 && kw == 1,
        "pointwise weight must be [cout, cin, 1, 1]"
    );
    PwShape {
        n,
        cin,
        cout,
        hw: h * w,
    }
}

fn bn_shape(x: &FlexTensor) -> BnShape {
    let [n, c, h, w] = dims4(x, "batch norm input");
    BnShape { n, c, hw: h * w }
}

fn depthwise_forward(x: &FlexTensor, weight: &FlexTensor, stride: usize) -> FlexTensor {
    let s = dw_shape(x, weight, stride);
    let (ho, wo) = s.out_hw();
    let y = timed(Phase::DwFwd, || {
        depthwise::forward(s, &values(x), &values(weight))
    });
    flex(y, &[s.n, s.c, ho, wo])
}

fn pointwise_forward(x: &FlexTensor, weight: &FlexTensor) -> FlexTensor {
    let s = pw_shape(x, weight);
    let [_, _, h, w] = dims4(x, "pointwise input");
    let y = timed(Phase::PwFwd, || {
        pointwise::forward(s, &values(x), &values(weight))
    });
    flex(y, &[s.n, s.cout, h, w])
}

/// The forward of [`MobileNetBackend::bn_act`]: output, mean, variance, and `1/σ` for the
/// backward.
fn bn_act_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
    relu6: bool,
) -> (FlexTensor, FlexTensor, FlexTensor, Vec<f32>) {
    let s = bn_shape(x);
    let f = timed(Phase::BnFwd, || {
        bn_act::forward(s, &values(x), &values(gamma), &values(beta), epsilon, relu6)
    });
    (
        flex(f.out, &x.shape().to_vec()),
        flex(f.mean, &[s.c]),
        flex(f.var, &[s.c]),
        f.inv_std,
    )
}

impl MobileNetBackend for Flex {
    fn depthwise3x3(x: FlexTensor, weight: FlexTensor, stride: usize) -> FlexTensor {
        depthwise_forward(&x, &weight, stride)
    }

    fn pointwise(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        pointwise_forward(&x, &weight)
    }

    fn bn_act(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        relu6: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (out, mean, var, _) = bn_act_forward(&x, &gamma, &beta, epsilon, relu6);
        (out, mean, var)
    }
}

/// What a conv's backward keeps: its input and weight, and its stride (depthwise).
#[derive(Clone)]
struct ConvState {
    x: FlexTensor,
    weight: FlexTensor,
    stride: usize,
}

impl fmt::Debug for ConvState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConvState")
            .field("stride", &self.stride)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct DepthwiseBackward;

impl Backward<Flex, 2> for DepthwiseBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let st = ops.state;
        let s = dw_shape(&st.x, &st.weight, st.stride);
        let dy = values(&dy);
        let (dx, dw) = timed(Phase::DwBwd, || {
            depthwise::backward(
                s,
                &values(&st.x),
                &values(&st.weight),
                &dy,
                node_x.is_some(),
                node_w.is_some(),
            )
        });
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, flex(dx, &[s.n, s.c, s.h, s.w]));
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, flex(dw, &[s.c, 1, 3, 3]));
        }
    }
}

#[derive(Debug)]
struct PointwiseBackward;

impl Backward<Flex, 2> for PointwiseBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let st = ops.state;
        let s = pw_shape(&st.x, &st.weight);
        let dy = values(&dy);
        let (dx, dw) = timed(Phase::PwBwd, || {
            (
                node_x
                    .is_some()
                    .then(|| pointwise::backward_input(s, &dy, &values(&st.weight))),
                node_w
                    .is_some()
                    .then(|| pointwise::backward_weight(s, &values(&st.x), &dy)),
            )
        });
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, flex(dx, &st.x.shape().to_vec()));
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, flex(dw, &[s.cout, s.cin, 1, 1]));
        }
    }
}

/// What BatchNorm + ReLU6's backward keeps.
#[derive(Clone)]
struct BnState {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: FlexTensor,
    inv_std: Vec<f32>,
    relu6: bool,
}

impl fmt::Debug for BnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BnState")
            .field("relu6", &self.relu6)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct BnActBackward;

impl Backward<Flex, 3> for BnActBackward {
    type State = BnState;

    fn backward(self, ops: Ops<BnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_g, node_b] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let st = ops.state;
        let s = bn_shape(&st.x);
        let g = timed(Phase::BnBwd, || {
            bn_act::backward(
                s,
                &values(&st.x),
                &values(&st.gamma),
                &values(&st.beta),
                &values(&st.mean),
                &st.inv_std,
                &values(&dout),
                st.relu6,
                node_x.is_some(),
            )
        });
        if let (Some(node), Some(dx)) = (node_x, g.x) {
            grads.register::<Flex>(node.id, flex(dx, &st.x.shape().to_vec()));
        }
        for (node, v) in [(node_g, g.gamma), (node_b, g.beta)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, flex(v, &[s.c]));
            }
        }
    }
}

impl<C: CheckpointStrategy> MobileNetBackend for Autodiff<Flex, C> {
    fn depthwise3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let out = depthwise_forward(x.primitive(), weight.primitive(), stride);
        match DepthwiseBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = ConvState {
                    x: x.primitive().clone(),
                    weight: weight.primitive().clone(),
                    stride,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn pointwise(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = pointwise_forward(x.primitive(), weight.primitive());
        match PointwiseBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = ConvState {
                    x: x.primitive().clone(),
                    weight: weight.primitive().clone(),
                    stride: 1,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn bn_act(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu6: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let detached = <Self as AutodiffBackend>::from_inner;
        let (out, mean, var, inv_std) = bn_act_forward(
            x.primitive(),
            gamma.primitive(),
            beta.primitive(),
            epsilon,
            relu6,
        );
        let out = match BnActBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = BnState {
                    x: x.primitive().clone(),
                    gamma: gamma.primitive().clone(),
                    beta: beta.primitive().clone(),
                    mean: mean.clone(),
                    inv_std,
                    relu6,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, detached(mean), detached(var))
    }
}
