"""Prints, for every tensor written by a node of MODEL, the node's 1-based position in the graph
and its op type, as JSON {tensor: [position, op_type]} (the onnx package reads the file)."""

import json
import sys

import onnx

model = onnx.load(sys.argv[1], load_external_data=False)
print(
    json.dumps(
        {
            out: [i + 1, node.op_type]
            for i, node in enumerate(model.graph.node)
            for out in node.output
        }
    )
)
