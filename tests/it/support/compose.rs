//! The training maths of flora's models written out again from Burn's elementary tensor ops,
//! independently of `flora::ops` (neither its fused kernels nor its `*_reference`
//! compositions): what the fused and the Burn training engines are both checked against.
//!
//! BatchNorm is spelled out (batch mean, biased batch variance, `(x - mean) / sqrt(var + eps)`,
//! running statistics `(1 - m) running + m batch` with the biased variance, as Burn's
//! `BatchNorm` and flora's training ops do); the pointwise conv is a matrix product, max pooling
//! a reshape and two maxima, ReLU and ReLU6 clamps. Only the dense and grouped 3×3 convs are
//! Burn's `conv2d`.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Gradients, Int, Tensor, TensorData};
use flora::model::mobilenet::Plan;

/// `BatchNormConfig`'s defaults, which flora's models keep.
pub const EPSILON: f64 = 1e-5;
pub const MOMENTUM: f64 = 0.1;

/// Batch statistics of one BatchNorm: mean and biased variance per channel (detached).
pub struct Stats {
    pub mean: Tensor<1>,
    pub var: Tensor<1>,
}

/// BatchNorm with batch statistics on `x` `[n, c, h, w]`.
pub fn batch_norm(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>) -> (Tensor<4>, Stats) {
    let c = x.dims()[1];
    let mean = x.clone().mean_dims(&[0, 2, 3]);
    let centered = x - mean.clone();
    let var = centered.clone().square().mean_dims(&[0, 2, 3]);
    let y = centered / var.clone().add_scalar(EPSILON).sqrt() * gamma.reshape([1, c, 1, 1])
        + beta.reshape([1, c, 1, 1]);
    let stats = Stats {
        mean: mean.reshape([c]).detach(),
        var: var.reshape([c]).detach(),
    };
    (y, stats)
}

/// The running statistic after one batch: `(1 - m) running + m batch`.
pub fn running(old: Tensor<1>, batch: Tensor<1>) -> Tensor<1> {
    old.detach().mul_scalar(1.0 - MOMENTUM) + batch.mul_scalar(MOMENTUM)
}

/// 2×2 max pooling, stride 2, dropping an odd last row and column.
pub fn max_pool2(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let (ho, wo) = (h / 2, w / 2);
    x.narrow(2, 0, 2 * ho)
        .narrow(3, 0, 2 * wo)
        .reshape([n, c, ho, 2, wo, 2])
        .max_dim(5)
        .max_dim(3)
        .reshape([n, c, ho, wo])
}

/// 3×3 conv with padding 1 (`groups` = channels for a depthwise one).
pub fn conv3x3(x: Tensor<4>, w: Tensor<4>, b: Option<Tensor<1>>, stride: usize) -> Tensor<4> {
    let groups = x.dims()[1] / w.dims()[1];
    conv2d(
        x,
        w,
        b,
        ConvOptions::new([stride, stride], [1, 1], [1, 1], groups),
    )
}

/// 1×1 conv without bias as a matrix product: `x` `[n, cin, h, w]`, `w` `[cout, cin, 1, 1]`.
pub fn pointwise(x: Tensor<4>, w: Tensor<4>) -> Tensor<4> {
    let [n, cin, h, wd] = x.dims();
    let cout = w.dims()[0];
    let rows = x.permute([0, 2, 3, 1]).reshape([n * h * wd, cin]);
    rows.matmul(w.reshape([cout, cin]).transpose())
        .reshape([n, h, wd, cout])
        .permute([0, 3, 1, 2])
}

/// The reference CNN's block (conv3x3 + bias → BatchNorm → ReLU → MaxPool2), NCHW.
pub fn conv_block(
    x: Tensor<4>,
    w: Tensor<4>,
    [b, gamma, beta]: [Tensor<1>; 3],
) -> (Tensor<4>, Stats) {
    let y = conv3x3(x, w, Some(b), 1);
    let (y, stats) = batch_norm(y, gamma, beta);
    (max_pool2(y.clamp_min(0.0)), stats)
}

/// BatchNorm with batch statistics, then ReLU6 when `relu6`.
pub fn bn_act(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, relu6: bool) -> (Tensor<4>, Stats) {
    let (y, stats) = batch_norm(x, gamma, beta);
    (if relu6 { y.clamp(0.0, 6.0) } else { y }, stats)
}

/// Mean cross-entropy of `logits` `[n, k]` against `labels`, from the log-sum-exp.
pub fn cross_entropy(logits: Tensor<2>, labels: &[i64]) -> Tensor<1> {
    let [n, k] = logits.dims();
    let device = logits.device();
    let max = logits.clone().max_dim(1).detach();
    let shifted = logits - max;
    let lse = shifted.clone().exp().sum_dim(1).log();
    let onehot = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [n]), &device)
        .one_hot::<2>(k)
        .float();
    (lse - (shifted * onehot).sum_dim(1)).mean()
}

/// One float tensor of a module (a parameter or a running statistic), in visiting order.
#[derive(Clone)]
pub struct Entry {
    /// Module path and shape, for messages.
    pub name: String,
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
    /// The gradient, where the tensor has one in the gradients given.
    pub grad: Option<Vec<f32>>,
}

struct Collect<'a> {
    grads: Option<&'a Gradients>,
    path: Vec<String>,
    out: Vec<Entry>,
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

impl ModuleVisitor for Collect<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        self.out.push(Entry {
            name: format!("{} {:?}", self.path.join("."), t.dims()),
            dims: t.dims().to_vec(),
            grad: self.grads.and_then(|g| t.grad(g)).map(values),
            values: values(t),
        });
    }
}

/// Every float tensor of `m` in visiting order, with its gradient in `grads`.
pub fn snapshot<M: Module>(m: &M, grads: Option<&Gradients>) -> Vec<Entry> {
    let mut c = Collect {
        grads,
        path: Vec::new(),
        out: Vec::new(),
    };
    m.visit(&mut c);
    c.out
}

/// A tensor of any of the ranks the models use, as a leaf of a fresh autodiff graph.
#[derive(Clone)]
pub enum Leaf {
    D1(Tensor<1>),
    D2(Tensor<2>),
    D4(Tensor<4>),
}

impl Leaf {
    fn new(e: &Entry, device: &Device) -> Self {
        let data = |d: &[usize]| TensorData::new(e.values.clone(), d.to_vec());
        match e.dims.len() {
            1 => Leaf::D1(Tensor::from_data(data(&e.dims), device).require_grad()),
            2 => Leaf::D2(Tensor::from_data(data(&e.dims), device).require_grad()),
            4 => Leaf::D4(Tensor::from_data(data(&e.dims), device).require_grad()),
            r => panic!("{}: rank {r}", e.name),
        }
    }

    pub fn d1(self) -> Tensor<1> {
        match self {
            Leaf::D1(t) => t,
            _ => panic!("expected a vector"),
        }
    }

    pub fn d2(self) -> Tensor<2> {
        match self {
            Leaf::D2(t) => t,
            _ => panic!("expected a matrix"),
        }
    }

    pub fn d4(self) -> Tensor<4> {
        match self {
            Leaf::D4(t) => t,
            _ => panic!("expected a 4-d tensor"),
        }
    }

    /// The gradient in `g` as plain values (zeros where the leaf got none).
    pub fn grad(&self, g: &Gradients) -> Vec<f32> {
        let (got, len) = match self {
            Leaf::D1(t) => (t.grad(g).map(values), t.shape().num_elements()),
            Leaf::D2(t) => (t.grad(g).map(values), t.shape().num_elements()),
            Leaf::D4(t) => (t.grad(g).map(values), t.shape().num_elements()),
        };
        got.unwrap_or_else(|| vec![0.0; len])
    }
}

/// The composition's view of a model: its tensors as leaves, read in visiting order, and what
/// its training pass produces for each (the new running statistics).
pub struct Composed {
    pub leaves: Vec<Leaf>,
    next: usize,
    /// The value of every tensor after the pass, where the pass changes it (running statistics).
    pub updated: Vec<Option<Tensor<1>>>,
}

impl Composed {
    /// Leaves holding the values of `entries` (a [`snapshot`]).
    pub fn new(entries: &[Entry], device: &Device) -> Self {
        Self {
            leaves: entries.iter().map(|e| Leaf::new(e, device)).collect(),
            next: 0,
            updated: vec![None; entries.len()],
        }
    }

    fn take<const N: usize>(&mut self) -> [Leaf; N] {
        let start = self.next;
        self.next += N;
        std::array::from_fn(|i| self.leaves[start + i].clone())
    }

    /// BatchNorm (+ ReLU6) of the next four tensors (gamma, beta, running mean, running var),
    /// recording the updated running statistics.
    fn norm(&mut self, y: Tensor<4>, relu6: bool) -> Tensor<4> {
        let at = self.next;
        let [gamma, beta, rm, rv] = self.take();
        let (y, s) = bn_act(y, gamma.d1(), beta.d1(), relu6);
        self.updated[at + 2] = Some(running(rm.d1(), s.mean));
        self.updated[at + 3] = Some(running(rv.d1(), s.var));
        y
    }

    /// Global average pooling, then the linear head (weight `[c, classes]`, bias).
    fn head(&mut self, x: Tensor<4>) -> Tensor<2> {
        let [n, c, _, _] = x.dims();
        let [w, b] = self.take();
        let pooled = x.mean_dims(&[2, 3]).reshape([n, c]);
        pooled.matmul(w.d2()) + b.d1().unsqueeze::<2>()
    }

    /// The reference CNN's training pass (dropout 0): logits of NCHW `x`.
    pub fn cnn(&mut self, mut x: Tensor<4>) -> Tensor<2> {
        for _ in 0..4 {
            let [w, b] = self.take();
            let y = conv3x3(x, w.d4(), Some(b.d1()), 1);
            x = max_pool2(self.norm(y, false).clamp_min(0.0));
        }
        let logits = self.head(x);
        assert_eq!(self.next, self.leaves.len(), "every tensor used");
        logits
    }

    /// MobileNetV2's training pass at `width` (dropout 0, nothing frozen): logits of NCHW `x`.
    pub fn mobilenet(&mut self, x: Tensor<4>, width: f64) -> Tensor<2> {
        let plan = Plan::new(width);
        let [w] = self.take();
        let mut x = self.norm(conv3x3(x, w.d4(), None, 2), true);
        for b in &plan.blocks {
            let mut y = x.clone();
            if b.expand != 1 {
                let [w] = self.take();
                y = self.norm(pointwise(y, w.d4()), true);
            }
            let [w] = self.take();
            y = self.norm(conv3x3(y, w.d4(), None, b.stride), true);
            let [w] = self.take();
            y = self.norm(pointwise(y, w.d4()), false);
            x = if b.stride == 1 && b.cin == b.cout {
                x + y
            } else {
                y
            };
        }
        let [w] = self.take();
        let x = self.norm(pointwise(x, w.d4()), true);
        let logits = self.head(x);
        assert_eq!(self.next, self.leaves.len(), "every tensor used");
        logits
    }
}

/// `max |got - want| / max |want|`: the difference relative to the tensor's scale.
pub fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths");
    let d = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    if d == 0.0 { 0.0 } else { d / scale }
}

/// Asserts `max |got - want| <= tol * max |want|` (printing the measured ratio under
/// `--nocapture`, where tolerances are chosen from).
pub fn assert_rel(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let r = rel_diff(got, want);
    eprintln!("measured {what}: {r:e}");
    assert!(
        r <= tol,
        "{what}: off by {r:e} of its scale (tolerance {tol:e})\n got {:?}\nwant {:?}",
        &got[..got.len().min(8)],
        &want[..want.len().min(8)]
    );
}

/// [`assert_rel`] on tensors.
pub fn assert_rel_t<const D: usize>(what: &str, got: Tensor<D>, want: Tensor<D>, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert_rel(what, &values(got), &values(want), tol);
}
