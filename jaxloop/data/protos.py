"""Protobuf messages of tf.Example and the WOMD `Scenario`, defined in code (no .proto, no TensorFlow).

The descriptors are built at import time with `descriptor_pb2` from the public field
numbers of `tensorflow/core/example/{example,feature}.proto` and of the Waymo Open
Dataset's `scenario.proto` / `map.proto`. Enums are declared as int32 (same varint
wire encoding), so values outside the known ranges survive parsing. Unknown fields
(e.g. the Scenario's compressed lidar) are skipped by the parser.

Use `Example()`, `Scenario()` etc. like generated classes: `Scenario.FromString(data)`.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_T = {
    "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "int64": _F.TYPE_INT64, "int32": _F.TYPE_INT32,
    "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES,
}

# message name -> [(field name, number, type or message name, label, packed)]
# label: "opt" | "rep"; a type not in _T is a message of this file.
_EXAMPLE = {
    "BytesList": [("value", 1, "bytes", "rep", False)],
    "FloatList": [("value", 1, "float", "rep", True)],
    "Int64List": [("value", 1, "int64", "rep", True)],
    "Feature": [("bytes_list", 1, "BytesList", "opt", False), ("float_list", 2, "FloatList", "opt", False),
                ("int64_list", 3, "Int64List", "opt", False)],
    "Features": [("feature", 1, "Features.FeatureEntry", "rep", False)],
    "Features.FeatureEntry": [("key", 1, "string", "opt", False), ("value", 2, "Feature", "opt", False)],
    "Example": [("features", 1, "Features", "opt", False)],
}

_SCENARIO = {
    "ObjectState": [
        ("center_x", 2, "double", "opt", False), ("center_y", 3, "double", "opt", False),
        ("center_z", 4, "double", "opt", False), ("length", 5, "float", "opt", False),
        ("width", 6, "float", "opt", False), ("height", 7, "float", "opt", False),
        ("heading", 8, "float", "opt", False), ("velocity_x", 9, "float", "opt", False),
        ("velocity_y", 10, "float", "opt", False), ("valid", 11, "bool", "opt", False)],
    "Track": [("id", 1, "int32", "opt", False), ("object_type", 2, "int32", "opt", False),
              ("states", 3, "ObjectState", "rep", False)],
    "MapPoint": [("x", 1, "double", "opt", False), ("y", 2, "double", "opt", False),
                 ("z", 3, "double", "opt", False)],
    "TrafficSignalLaneState": [("lane", 1, "int64", "opt", False), ("state", 2, "int32", "opt", False),
                               ("stop_point", 3, "MapPoint", "opt", False)],
    "DynamicMapState": [("lane_states", 1, "TrafficSignalLaneState", "rep", False)],
    "RequiredPrediction": [("track_index", 1, "int32", "opt", False), ("difficulty", 2, "int32", "opt", False)],
    "BoundarySegment": [("lane_start_index", 1, "int32", "opt", False), ("lane_end_index", 2, "int32", "opt", False),
                        ("boundary_feature_id", 3, "int64", "opt", False),
                        ("boundary_type", 4, "int32", "opt", False)],
    "LaneNeighbor": [("feature_id", 1, "int64", "opt", False), ("self_start_index", 2, "int32", "opt", False),
                     ("self_end_index", 3, "int32", "opt", False), ("neighbor_start_index", 4, "int32", "opt", False),
                     ("neighbor_end_index", 5, "int32", "opt", False),
                     ("boundaries", 6, "BoundarySegment", "rep", False)],
    "LaneCenter": [("speed_limit_mph", 1, "double", "opt", False), ("type", 2, "int32", "opt", False),
                   ("interpolating", 3, "bool", "opt", False), ("polyline", 8, "MapPoint", "rep", False),
                   ("entry_lanes", 9, "int64", "rep", True), ("exit_lanes", 10, "int64", "rep", True),
                   ("left_neighbors", 11, "LaneNeighbor", "rep", False),
                   ("right_neighbors", 12, "LaneNeighbor", "rep", False),
                   ("left_boundaries", 13, "BoundarySegment", "rep", False),
                   ("right_boundaries", 14, "BoundarySegment", "rep", False)],
    "RoadEdge": [("type", 1, "int32", "opt", False), ("polyline", 2, "MapPoint", "rep", False)],
    "RoadLine": [("type", 1, "int32", "opt", False), ("polyline", 2, "MapPoint", "rep", False)],
    "StopSign": [("lane", 1, "int64", "rep", False), ("position", 2, "MapPoint", "opt", False)],
    "Crosswalk": [("polygon", 1, "MapPoint", "rep", False)],
    "SpeedBump": [("polygon", 1, "MapPoint", "rep", False)],
    "Driveway": [("polygon", 1, "MapPoint", "rep", False)],
    "MapFeature": [("id", 1, "int64", "opt", False), ("lane", 3, "LaneCenter", "opt", False),
                   ("road_line", 4, "RoadLine", "opt", False), ("road_edge", 5, "RoadEdge", "opt", False),
                   ("stop_sign", 7, "StopSign", "opt", False), ("crosswalk", 8, "Crosswalk", "opt", False),
                   ("speed_bump", 9, "SpeedBump", "opt", False), ("driveway", 10, "Driveway", "opt", False)],
    "Scenario": [("timestamps_seconds", 1, "double", "rep", False), ("tracks", 2, "Track", "rep", False),
                 ("objects_of_interest", 4, "int32", "rep", False), ("scenario_id", 5, "string", "opt", False),
                 ("sdc_track_index", 6, "int32", "opt", False),
                 ("dynamic_map_states", 7, "DynamicMapState", "rep", False),
                 ("map_features", 8, "MapFeature", "rep", False), ("current_time_index", 10, "int32", "opt", False),
                 ("tracks_to_predict", 11, "RequiredPrediction", "rep", False)],
}
# Feature.kind and MapFeature.feature_data are oneofs in the public schemas.
_ONEOFS = {"Feature": ("kind", ("bytes_list", "float_list", "int64_list")),
           "MapFeature": ("feature_data", ("lane", "road_line", "road_edge", "stop_sign", "crosswalk",
                                           "speed_bump", "driveway"))}


def _build(package: str, file_name: str, spec: dict, map_entries: tuple[str, ...] = ()) -> dict:
    fdp = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto2")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for name in spec:  # nested types (A.B) go inside their parent
        parent, _, child = name.rpartition(".")
        container = protos[parent].nested_type if parent else fdp.message_type
        protos[name] = container.add(name=child or name)
        if name in map_entries:
            protos[name].options.map_entry = True
    for name, fields in spec.items():
        msg = protos[name]
        oneof = _ONEOFS.get(name)
        if oneof:
            msg.oneof_decl.add(name=oneof[0])
        for fname, number, ftype, label, packed in fields:
            f = msg.field.add(name=fname, number=number,
                              label=_F.LABEL_REPEATED if label == "rep" else _F.LABEL_OPTIONAL)
            if ftype in _T:
                f.type = _T[ftype]
            else:
                f.type = _F.TYPE_MESSAGE
                f.type_name = f".{package}.{ftype}"
            if packed:
                f.options.packed = True
            if oneof and fname in oneof[1]:
                f.oneof_index = 0
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
            for name in spec}


_ex = _build("jaxloop.tfexample", "jaxloop/tfexample.proto", _EXAMPLE, map_entries=("Features.FeatureEntry",))
Example = _ex["Example"]
Features = _ex["Features"]
Feature = _ex["Feature"]
BytesList, FloatList, Int64List = _ex["BytesList"], _ex["FloatList"], _ex["Int64List"]

_sc = _build("jaxloop.womd", "jaxloop/womd_scenario.proto", _SCENARIO)
Scenario = _sc["Scenario"]
Track = _sc["Track"]
ObjectState = _sc["ObjectState"]
MapFeature = _sc["MapFeature"]
MapPoint = _sc["MapPoint"]
DynamicMapState = _sc["DynamicMapState"]
TrafficSignalLaneState = _sc["TrafficSignalLaneState"]
RequiredPrediction = _sc["RequiredPrediction"]
