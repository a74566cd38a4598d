//! The fused conv block as a Burn backend extension: implemented on raw Flex tensors, and for
//! `Autodiff<Flex>` with a hand-written backward, so Burn's autodiff graph, optimizer and
//! module tree drive it like any built-in op.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, TensorData};

use super::conv_block::{self, BlockShape, Saved};

/// The fused training op of the reference CNN's block (see [`super::conv_block`]). Tensors are
/// channels-last: `x` is `[n, h, w, cin]`, the output `[n, h/2, w/2, cout]`; `weight` is Burn's
/// conv weight `[cout, cin, 3, 3]`. Returns the output, then the batch mean and biased variance
/// of the conv output (detached), which feed BatchNorm's running statistics.
#[backend_extension(Flex, Autodiff)]
pub trait ConvBlockBackend: Backend {
    fn conv_block_train(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The f32 values of a Flex tensor in row-major order (borrowed when already contiguous).
pub(super) fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    assert_eq!(
        t.dtype(),
        DType::F32,
        "the fused training ops run on f32 tensors"
    );
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("contiguous")
                .to_vec(),
        ),
    }
}

pub(super) fn flex(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape.to_vec()))
}

/// The block's shape from its input and weight tensors, checked.
fn block_shape(x: &FlexTensor, weight: &FlexTensor) -> BlockShape {
    let (xs, ws) = (x.shape(), weight.shape());
    assert_eq!(xs.num_dims(), 4, "conv block input must be [n, h, w, c]");
    assert_eq!(
        ws.num_dims(),
        4,
        "conv block weight must be [cout, cin, 3, 3]"
    );
    assert!(ws[2] == 3 && ws[3] == 3, "conv block kernel must be 3×3");
    assert_eq!(xs[3], ws[1], "conv block input channels");
    BlockShape {
        n: xs[0],
        h: xs[1],
        w: xs[2],
        cin: xs[3],
        cout: ws[0],
    }
}

/// Everything the forward computes, in Flex tensors and the saved state.
struct Computed {
    out: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    saved: Saved,
    wmat: Vec<f32>,
    shape: BlockShape,
}

fn compute(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
) -> Computed {
    let s = block_shape(x, weight);
    let wmat = conv_block::weight_to_im2col(&values(weight), s.cin, s.cout);
    let f = conv_block::forward(
        s,
        &values(x),
        &wmat,
        &values(bias),
        &values(gamma),
        &values(beta),
        epsilon,
    );
    let (ph, pw) = s.pooled();
    Computed {
        out: flex(f.out, &[s.n, ph, pw, s.cout]),
        mean: flex(f.mean, &[s.cout]),
        var: flex(f.var, &[s.cout]),
        saved: f.saved,
        wmat,
        shape: s,
    }
}

impl ConvBlockBackend for Flex {
    fn conv_block_train(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let c = compute(&x, &weight, &bias, &gamma, &beta, epsilon);
        (c.out, c.mean, c.var)
    }
}

/// What the backward step keeps from the forward.
#[derive(Clone)]
struct State {
    x: FlexTensor,
    gamma: FlexTensor,
    wmat: Arc<Vec<f32>>,
    saved: Arc<Saved>,
    shape: BlockShape,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConvBlockState")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct ConvBlockBackward;

impl Backward<Flex, 5> for ConvBlockBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b, node_g, node_beta] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let st = ops.state;
        let s = st.shape;
        let g = conv_block::backward(
            s,
            &values(&st.x),
            &st.wmat,
            &values(&st.gamma),
            &st.saved,
            &values(&dout),
            node_x.is_some(),
        );
        if let (Some(node), Some(dx)) = (node_x, g.x) {
            grads.register::<Flex>(node.id, flex(dx, &[s.n, s.h, s.w, s.cin]));
        }
        if let Some(node) = node_w {
            let w = conv_block::weight_from_im2col(&g.weight, s.cin, s.cout);
            grads.register::<Flex>(node.id, flex(w, &[s.cout, s.cin, 3, 3]));
        }
        for (node, v) in [(node_b, g.bias), (node_g, g.gamma), (node_beta, g.beta)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, flex(v, &[s.cout]));
            }
        }
    }
}

impl<C: CheckpointStrategy> ConvBlockBackend for Autodiff<Flex, C> {
    fn conv_block_train(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let detached = <Self as AutodiffBackend>::from_inner;
        let prep = ConvBlockBackward
            .prepare::<C>([
                x.node(),
                weight.node(),
                bias.node(),
                gamma.node(),
                beta.node(),
            ])
            .compute_bound()
            .stateful();
        let c = compute(
            x.primitive(),
            weight.primitive(),
            bias.primitive(),
            gamma.primitive(),
            beta.primitive(),
            epsilon,
        );
        let out = match prep {
            OpsKind::Tracked(prep) => {
                let state = State {
                    x: x.primitive().clone(),
                    gamma: gamma.primitive().clone(),
                    wmat: Arc::new(c.wmat),
                    saved: Arc::new(c.saved),
                    shape: c.shape,
                };
                prep.finish(state, c.out)
            }
            OpsKind::UnTracked(prep) => prep.finish(c.out),
        };
        (out, detached(c.mean), detached(c.var))
    }
}
