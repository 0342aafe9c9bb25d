package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// parse is Load and Parse without the file handling; dir, if not empty,
// is the directory relative file references are resolved against.
//
// yaml.v3 reports decode problems as strings carrying only a line number,
// and drops a list element whose decoding failed, which would shift the
// indexes in every later error. So the document is first parsed into a
// node tree, with aliases expanded into copies so that every node has
// exactly one path, and checked against the Config schema by a walker,
// which reports each problem as a FieldError with its path and value and
// repairs the tree. A clean document is then decoded strictly
// (KnownFields) from the bytes; a document with problems is decoded from
// the repaired tree only so that the rest of it can still be validated,
// and all problems are reported together.
func parse(data []byte, dir string) (*Config, error) {
	root, err := parseDocument(data)
	if err != nil {
		return nil, err
	}
	var w walker
	w.walk(root, "", reflect.TypeFor[Config]())

	c := newConfig()
	if len(w.errs) == 0 {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(c); err != nil {
			// The walker should have caught this; never let it pass.
			return nil, err
		}
	} else if err := root.Decode(c); err != nil {
		return nil, errors.Join(append(w.errs, err)...)
	}

	c.resolvePaths(dir)
	c.Gossip.loadKeyFile()
	c.applyDefaults()
	errs := w.errs
	if err := c.Validate(); err != nil {
		for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
			// A repaired field holds its default or zero value now;
			// complaints about that value would mislead.
			if fe, ok := e.(*FieldError); ok && w.covers(fe.Field) {
				continue
			}
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// DecodeChecked decodes one YAML document into out (a pointer to a
// struct) as this package decodes observer configs: unknown keys (with a
// "did you mean"), values of the wrong type, repeated keys and empty list
// entries are each reported as a *FieldError naming its path, and the rest
// of the document is still decoded so that it can be validated too. It
// returns those problems and covers, which reports whether a field path
// had one (a validation error about such a field, now at its zero value,
// would mislead). err is a document that cannot be read at all (empty,
// not YAML, more than one document). Used for the node agent's config.
func DecodeChecked(data []byte, out any) (problems []error, covers func(field string) bool, err error) {
	root, err := parseDocument(data)
	if err != nil {
		return nil, nil, err
	}
	t := reflect.TypeOf(out)
	if t == nil || t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil, nil, fmt.Errorf("decode config: want a pointer to a struct, got %T", out)
	}
	var w walker
	w.walk(root, "", t.Elem())
	if len(w.errs) == 0 {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(out); err != nil {
			return nil, nil, err // the walker should have caught it
		}
	} else if err := root.Decode(out); err != nil {
		return append(w.errs, err), w.covers, nil
	}
	return w.errs, w.covers, nil
}

// parseDocument parses data into a node tree and returns the top-level
// mapping. It insists on exactly one non-empty document.
func parseDocument(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errEmpty
		}
		return nil, err
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, fmt.Errorf("line %d: a second YAML document; the configuration must be a single document", next.Line)
	case !errors.Is(err, io.EOF):
		return nil, err
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil, errEmpty
		}
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		return nil, errEmpty
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the configuration must be a mapping of settings (key: value), not %s", root.Line, describeNode(root))
	}
	budget := maxNodes
	return expand(root, &budget, map[*yaml.Node]bool{})
}

// maxNodes bounds the size of a document after alias expansion. Real
// configs have hundreds of nodes; the bound stops "billion laughs" alias
// bombs from exhausting memory.
const maxNodes = 100_000

// expand returns a deep copy of n with every alias replaced by a copy of
// its target. open holds the nodes being copied, to detect an alias
// inside its own anchor.
func expand(n *yaml.Node, budget *int, open map[*yaml.Node]bool) (*yaml.Node, error) {
	if *budget--; *budget < 0 {
		return nil, fmt.Errorf("document too large after expanding aliases (more than %d nodes)", maxNodes)
	}
	if n.Kind == yaml.AliasNode {
		switch {
		case n.Alias == nil:
			return nil, fmt.Errorf("line %d: unknown anchor %q", n.Line, n.Value)
		case open[n.Alias]:
			return nil, fmt.Errorf("line %d: alias *%s refers to its own anchor", n.Line, n.Value)
		}
		return expand(n.Alias, budget, open)
	}
	open[n] = true
	defer delete(open, n)
	cp := *n
	cp.Content = make([]*yaml.Node, len(n.Content))
	for i, child := range n.Content {
		c, err := expand(child, budget, open)
		if err != nil {
			return nil, err
		}
		cp.Content[i] = c
	}
	return &cp, nil
}

// walker checks a node tree against a Go type the way yaml.v3's strict
// decoder would, recording problems as FieldErrors and repairing the tree
// (bad values become null, bad keys are dropped) so it decodes cleanly.
type walker struct {
	errs []error
	// bad holds the paths that have a problem, to suppress follow-up
	// validation errors on the same fields.
	bad []string
}

var (
	durationType = reflect.TypeFor[Duration]()
	byteSizeType = reflect.TypeFor[ByteSize]()
)

// blank turns n into null, which the decoder treats as "keep the default".
func blank(n *yaml.Node) {
	*n = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: n.Line, Column: n.Column}
}

func (w *walker) add(path string, value any, reason string, args ...any) {
	w.errs = append(w.errs, &FieldError{Field: path, Value: value, Reason: fmt.Sprintf(reason, args...)})
	w.bad = append(w.bad, path)
}

// covers reports whether field is, or is inside, a field with a problem.
func (w *walker) covers(field string) bool {
	for _, p := range w.bad {
		if field == p || strings.HasPrefix(field, p+".") || strings.HasPrefix(field, p+"[") {
			return true
		}
	}
	return false
}

func (w *walker) walk(n *yaml.Node, path string, t reflect.Type) {
	if n.ShortTag() == "!!null" {
		// null leaves the default in place, as the decoder does.
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType || t == byteSizeType:
		if n.Kind != yaml.ScalarNode {
			w.add(path, nil, "expected %s, got %s", describeType(t), describeNode(n))
			blank(n)
			return
		}
		var err error
		if t == durationType {
			_, err = parseDuration(n.Value)
		} else {
			_, err = parseByteSize(n.Value)
		}
		if err != nil {
			w.add(path, n.Value, "%v", err)
			blank(n)
		}
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.add(path, nil, "expected a mapping (key: value), got %s", describeNode(n))
			blank(n)
			return
		}
		w.mapping(n, path, t, map[string]*yaml.Node{}, false)
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.add(path, nil, "expected a list, got %s", describeNode(n))
			blank(n)
			return
		}
		for i, item := range n.Content {
			ip := fmt.Sprintf("%s[%d]", path, i)
			if item.ShortTag() == "!!null" {
				// The decoder would drop this entry and shift the index
				// of every later one; an empty mapping (all lists in the
				// schema hold mappings) keeps its place.
				w.add(ip, nil, "empty list entry")
				*item = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: item.Line, Column: item.Column}
				continue
			}
			w.walk(item, ip, t.Elem())
		}
	default:
		if n.Kind != yaml.ScalarNode {
			w.add(path, nil, "expected %s, got %s", describeType(t), describeNode(n))
			blank(n)
			return
		}
		// Decoding a lone scalar involves no struct, so the lack of
		// KnownFields in Node.Decode does not matter here.
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			if msg, ok := unmarshalerReason(t, err); ok {
				// The type's own UnmarshalYAML said what is wrong.
				w.add(path, nil, "%s", msg)
			} else {
				w.add(path, n.Value, "expected %s", describeType(t))
			}
			blank(n)
		}
	}
}

// mapping checks the keys of a mapping decoded into struct type t and
// drops the pairs the decoder would reject. seen tracks keys already set:
// a repeated key is an error, while a key also provided by a "<<" merge is
// simply overridden, as in YAML.
func (w *walker) mapping(n *yaml.Node, path string, t reflect.Type, seen map[string]*yaml.Node, merged bool) {
	fields := structFields(t)
	var merges []*yaml.Node
	kept := make([]*yaml.Node, 0, len(n.Content))
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if isMergeKey(k) {
			// yaml.v3 honours only the last "<<" of a mapping.
			if len(merges) > 0 {
				w.add(path, nil, "line %d: more than one << merge key; use a list: <<: [*a, *b]", k.Line)
			} else if w.mergeOK(val, path) {
				kept = append(kept, k, val)
				merges = append(merges, val)
			}
			continue
		}
		if k.Kind != yaml.ScalarNode {
			w.add(path, nil, "line %d: keys must be plain names, got %s", k.Line, describeNode(k))
			continue
		}
		kp := k.Value
		if path != "" {
			kp = path + "." + k.Value
		}
		if prev, dup := seen[k.Value]; dup {
			if merged {
				// Overridden by an explicit key (or an earlier merge),
				// which the decoder respects too.
				kept = append(kept, k, val)
			} else {
				w.add(kp, nil, "set twice (lines %d and %d)", prev.Line, k.Line)
			}
			continue
		}
		seen[k.Value] = k
		ft, ok := fields[k.Value]
		if !ok {
			w.add(kp, nil, "unknown field%s", suggest(k.Value, fields))
			continue
		}
		w.walk(val, kp, ft)
		kept = append(kept, k, val)
	}
	n.Content = kept
	// Merged keys are checked after the explicit ones, which take
	// precedence over them.
	for _, m := range merges {
		targets := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			targets = m.Content
		}
		for _, tn := range targets {
			w.mapping(tn, path, t, seen, true)
		}
	}
}

// mergeOK checks the value of a "<<" key, which must be a mapping or a
// list of mappings (aliases are already expanded).
func (w *walker) mergeOK(val *yaml.Node, path string) bool {
	targets := []*yaml.Node{val}
	if val.Kind == yaml.SequenceNode {
		targets = val.Content
	}
	for _, tn := range targets {
		if tn.Kind != yaml.MappingNode {
			w.add(path, nil, "line %d: a << merge needs a mapping or a list of mappings, got %s", tn.Line, describeNode(tn))
			return false
		}
	}
	return true
}

// isMergeKey mirrors yaml.v3's test for the "<<" merge key.
func isMergeKey(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Value == "<<" && (n.Tag == "" || n.Tag == "!" || n.ShortTag() == "!!merge")
}

// structFields maps the YAML keys of struct type t to field types,
// following yaml.v3's naming rules for the tags used in this package.
func structFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = strings.ToLower(f.Name)
		}
		fields[name] = f.Type
	}
	return fields
}

// suggest proposes the closest known key for a misspelt one, or lists the
// known keys if none is close.
func suggest(key string, fields map[string]reflect.Type) string {
	key = strings.ToLower(key)
	best, bestDist := "", 3 // more than 2 edits is not a typo
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
		d := editDistance(key, name)
		if len(key) >= 3 && strings.HasPrefix(name, key) {
			d = min(d, 1) // an abbreviation, e.g. "prio"
		}
		if d < bestDist || d == bestDist && name < best {
			best, bestDist = name, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	slices.Sort(names)
	return " (known: " + strings.Join(names, ", ") + ")"
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:40] + "..."
	}
	return fmt.Sprintf("%q", v)
}

func describeType(t reflect.Type) string {
	switch {
	case t == durationType || t.Name() == "Duration":
		// Also the node agent's Duration (DecodeChecked).
		return `a duration such as "500ms"`
	case t == byteSizeType:
		return "a byte size such as 16MiB"
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	}
	return t.String()
}

var (
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	positionPrefix  = regexp.MustCompile(`^line \d+(?: column \d+)?: `)
)

// unmarshalerReason is the reason a type's own UnmarshalYAML gave for
// refusing a value, without yaml's position prefix (the path says where).
func unmarshalerReason(t reflect.Type, err error) (string, bool) {
	var te *yaml.TypeError
	if !reflect.PointerTo(t).Implements(unmarshalerType) || !errors.As(err, &te) || len(te.Errors) != 1 {
		return "", false
	}
	return positionPrefix.ReplaceAllString(te.Errors[0], ""), true
}
