package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The -o json shape, stable across releases and independent of protojson's
// deliberately randomized spacing: field names as in the .proto files
// (snake_case); every field present, unset ones as their zero value (0,
// false, "", [], {}; an unset message as null); 64-bit integers as JSON
// numbers, not strings; enums by name; timestamps as RFC 3339 strings in
// UTC with nanoseconds (null when unset); bytes as base64; keys sorted;
// two-space indentation. docs/operations.md ("vigilctl -o json") says
// the same for operators.

// jsonValue converts a message into what encoding/json prints in that shape.
func jsonValue(m protoreflect.Message) any {
	if !m.IsValid() {
		return nil
	}
	if m.Descriptor().FullName() == "google.protobuf.Timestamp" {
		ts, ok := m.Interface().(*timestamppb.Timestamp)
		if !ok {
			return nil
		}
		return ts.AsTime().UTC().Format(time.RFC3339Nano)
	}
	out := map[string]any{}
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		name := string(fd.Name())
		switch {
		case fd.IsList():
			list := m.Get(fd).List()
			vals := make([]any, 0, list.Len())
			for j := 0; j < list.Len(); j++ {
				vals = append(vals, scalarOrMessage(fd, list.Get(j)))
			}
			out[name] = vals
		case fd.IsMap():
			mp := m.Get(fd).Map()
			vals := map[string]any{}
			mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				vals[k.String()] = scalarOrMessage(fd.MapValue(), v)
				return true
			})
			out[name] = vals
		case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
			if m.Has(fd) {
				out[name] = jsonValue(m.Get(fd).Message())
			} else {
				out[name] = nil
			}
		default:
			out[name] = scalarOrMessage(fd, m.Get(fd))
		}
	}
	return out
}

func scalarOrMessage(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return jsonValue(v.Message())
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return int32(v.Enum())
	case protoreflect.BoolKind:
		return v.Bool()
	case protoreflect.StringKind:
		return v.String()
	case protoreflect.BytesKind:
		return base64.StdEncoding.EncodeToString(v.Bytes())
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return v.Float()
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return json.Number(strconv.FormatInt(v.Int(), 10))
	default: // unsigned
		return json.Number(strconv.FormatUint(v.Uint(), 10))
	}
}

// marshalJSON is m in the -o json shape; indent "" gives one line.
func marshalJSON(m proto.Message, indent string) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if indent != "" {
		enc.SetIndent("", indent)
	}
	if err := enc.Encode(jsonValue(m.ProtoReflect())); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
