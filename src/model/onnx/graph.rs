//! A small builder over ONNX's protobuf messages: nodes with unique output names, initializers
//! from flat `f32` arrays, attributes, and typed graph inputs and outputs.

use super::proto::attribute_proto::AttributeType;
use super::proto::tensor_proto::DataType;
use super::proto::tensor_shape_proto::{Dimension, dimension};
use super::proto::type_proto;
use super::proto::{
    AttributeProto, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// One dimension of a graph input or output: fixed, or named (dynamic, such as the batch).
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

/// An attribute value of a node.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// Builds a [`GraphProto`] node by node.
#[derive(Debug, Default)]
pub struct Graph {
    proto: GraphProto,
    counter: usize,
}

impl Graph {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            proto: GraphProto {
                name: Some(name.to_string()),
                ..Default::default()
            },
            counter: 0,
        }
    }

    /// A fresh value name starting with `stem`.
    fn fresh(&mut self, stem: &str) -> String {
        self.counter += 1;
        format!("{stem}_{}", self.counter)
    }

    /// Adds a constant float tensor; returns its name.
    pub fn constant(&mut self, stem: &str, dims: &[usize], values: &[f32]) -> String {
        assert_eq!(dims.iter().product::<usize>(), values.len(), "{stem} shape");
        let name = self.fresh(stem);
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.proto.initializer.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    /// Adds a constant tensor of another element type from its little-endian bytes.
    pub fn constant_raw(
        &mut self,
        stem: &str,
        dims: &[usize],
        ty: DataType,
        raw: Vec<u8>,
    ) -> String {
        let name = self.fresh(stem);
        self.proto.initializer.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(ty as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    /// Adds an `op` node reading `inputs`; returns the name of its one output.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.node_into(op, inputs, attrs, &out);
        out
    }

    /// Adds an `op` node writing the value called `output` (a graph output, say).
    pub fn node_into(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)], output: &str) {
        let name = format!("{op}_{}", self.proto.node.len());
        self.proto.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: Some(name),
            op_type: Some(op.to_string()),
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, ty: DataType, dims: &[Dim]) {
        self.proto.input.push(value_info(name, ty, dims));
    }

    /// Declares a graph output.
    pub fn output(&mut self, name: &str, ty: DataType, dims: &[Dim]) {
        self.proto.output.push(value_info(name, ty, dims));
    }

    /// The finished graph.
    pub fn finish(self) -> GraphProto {
        self.proto
    }
}

fn attribute(name: &str, a: &Attr) -> AttributeProto {
    let mut p = AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match a {
        Attr::Int(i) => {
            p.r#type = Some(AttributeType::Int as i32);
            p.i = Some(*i);
        }
        Attr::Ints(v) => {
            p.r#type = Some(AttributeType::Ints as i32);
            p.ints = v.clone();
        }
        Attr::Float(f) => {
            p.r#type = Some(AttributeType::Float as i32);
            p.f = Some(*f);
        }
    }
    p
}

fn value_info(name: &str, ty: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Named(s) => dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(ty as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
