// Package swagger validates Firecracker API requests against Firecracker's
// published swagger 2.0 specification (firecracker.yaml). It is a small
// schema walker written for tests: it resolves $ref, checks types,
// required fields, enums and numeric ranges, and counts every field the
// schema does not define as a failure, because Firecracker rejects
// unknown fields. It does not implement the rest of JSON Schema.
package swagger

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// SpecFile is the file name of the pinned release specification.
const SpecFile = "firecracker-v1.16.1.yaml"

// Spec is a loaded specification.
type Spec struct {
	Version string
	paths   map[string]map[string]any // path template → method → operation
	defs    map[string]any
}

// Find walks up from dir looking for a sibling directory
// shared/firecracker holding SpecFile, and returns its path.
func Find(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "shared", "firecracker", SpecFile)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%s not found in a shared/firecracker directory above the test", SpecFile)
		}
		dir = parent
	}
}

// Load reads and parses a specification file.
func Load(path string) (*Spec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	s := &Spec{paths: map[string]map[string]any{}}
	if info, ok := doc["info"].(map[string]any); ok {
		s.Version = fmt.Sprint(info["version"])
	}
	s.defs, _ = doc["definitions"].(map[string]any)
	paths, _ := doc["paths"].(map[string]any)
	for p, item := range paths {
		ops, _ := item.(map[string]any)
		s.paths[p] = map[string]any{}
		for m, op := range ops {
			s.paths[p][strings.ToUpper(m)] = op
		}
	}
	if len(s.paths) == 0 || s.defs == nil {
		return nil, errors.New("specification has no paths or definitions")
	}
	return s, nil
}

var pathID = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

// Operation returns the template matching a concrete path and the
// operation for method, or an error when the spec has neither.
func (s *Spec) Operation(method, path string) (string, map[string]any, error) {
	segs := strings.Split(path, "/")
	var names []string
	for t := range s.paths {
		names = append(names, t)
	}
	sort.Strings(names)
	for _, t := range names {
		tsegs := strings.Split(t, "/")
		if len(tsegs) != len(segs) {
			continue
		}
		match := true
		for i := range tsegs {
			if strings.HasPrefix(tsegs[i], "{") {
				if !pathID.MatchString(segs[i]) {
					match = false
				}
				continue
			}
			if tsegs[i] != segs[i] {
				match = false
			}
		}
		if !match {
			continue
		}
		op, ok := s.paths[t][method].(map[string]any)
		if !ok {
			return t, nil, fmt.Errorf("%s %s: the spec has no %s on %s", method, path, method, t)
		}
		return t, op, nil
	}
	return "", nil, fmt.Errorf("%s %s: no path in the spec matches (or an id has characters other than [A-Za-z0-9_])", method, path)
}

// ValidateRequest checks one request and returns every problem found.
func (s *Spec) ValidateRequest(method, path string, body []byte) []string {
	_, op, err := s.Operation(method, path)
	if err != nil {
		return []string{err.Error()}
	}
	var bodySchema any
	bodyRequired := false
	params, _ := op["parameters"].([]any)
	for _, p := range params {
		pm, _ := p.(map[string]any)
		if pm["in"] == "body" {
			bodySchema = pm["schema"]
			bodyRequired, _ = pm["required"].(bool)
		}
	}
	if len(body) == 0 {
		if bodyRequired {
			return []string{fmt.Sprintf("%s %s: body required by the spec is missing", method, path)}
		}
		return nil
	}
	if bodySchema == nil {
		return []string{fmt.Sprintf("%s %s: the spec defines no body, got %d bytes", method, path, len(body))}
	}
	var v any
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return []string{fmt.Sprintf("%s %s: body is not JSON: %v", method, path, err)}
	}
	var problems []string
	s.validate(bodySchema, v, method+" "+path+" body", &problems)
	return problems
}

func (s *Spec) resolve(schema any) map[string]any {
	m, _ := schema.(map[string]any)
	for m != nil {
		ref, ok := m["$ref"].(string)
		if !ok {
			return m
		}
		m, _ = s.defs[strings.TrimPrefix(ref, "#/definitions/")].(map[string]any)
	}
	return nil
}

func (s *Spec) validate(schema, v any, at string, problems *[]string) {
	sch := s.resolve(schema)
	if sch == nil {
		*problems = append(*problems, at+": schema reference does not resolve")
		return
	}
	add := func(format string, args ...any) {
		*problems = append(*problems, at+": "+fmt.Sprintf(format, args...))
	}
	typ, _ := sch["type"].(string)
	switch typ {
	case "object", "":
		obj, ok := v.(map[string]any)
		if !ok {
			add("got %T, want object", v)
			return
		}
		s.validateObject(sch, obj, at, problems)
	case "string":
		str, ok := v.(string)
		if !ok {
			add("got %T, want string", v)
			return
		}
		if enum, ok := sch["enum"].([]any); ok && !inEnum(enum, str) {
			add("got %q, want one of %v", str, enum)
		}
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			add("got %T, want integer", v)
			return
		}
		i, err := n.Int64()
		if err != nil {
			add("got %s, want integer", n)
			return
		}
		if min, ok := number(sch["minimum"]); ok && float64(i) < min {
			add("got %d, want at least %v", i, min)
		}
		if max, ok := number(sch["maximum"]); ok && float64(i) > max {
			add("got %d, want at most %v", i, max)
		}
		if sch["format"] == "int32" && (i < math.MinInt32 || i > math.MaxInt32) {
			add("got %d, want int32", i)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			add("got %T, want boolean", v)
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			add("got %T, want array", v)
			return
		}
		for i, item := range arr {
			s.validate(sch["items"], item, fmt.Sprintf("%s[%d]", at, i), problems)
		}
	default:
		add("schema type %q is not handled by this validator", typ)
	}
}

func (s *Spec) validateObject(sch map[string]any, obj map[string]any, at string, problems *[]string) {
	props, _ := sch["properties"].(map[string]any)
	open, _ := sch["additionalProperties"].(bool)
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ps, ok := props[k]
		if !ok {
			if !open {
				*problems = append(*problems, fmt.Sprintf("%s: field %q is not defined by the spec", at, k))
			}
			continue
		}
		s.validate(ps, obj[k], at+"."+k, problems)
	}
	req, _ := sch["required"].([]any)
	for _, r := range req {
		if _, ok := obj[fmt.Sprint(r)]; !ok {
			*problems = append(*problems, fmt.Sprintf("%s: required field %q is missing", at, r))
		}
	}
}

func inEnum(enum []any, s string) bool {
	for _, e := range enum {
		if fmt.Sprint(e) == s {
			return true
		}
	}
	return false
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case int:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}
