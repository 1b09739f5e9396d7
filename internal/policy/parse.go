package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Parse reads every policy of a file: one or more YAML documents separated
// by "---" (empty documents are skipped). It returns all the policies, with
// defaults applied, or none and a *ValidationError listing every problem of
// the file as "file:line: field: message". A file without any policy is an
// error too.
func Parse(filename string, content []byte) ([]*Policy, error) {
	verr := &ValidationError{File: filename}
	docs := readDocuments(content, verr)

	var out []*Policy
	names := map[string]int{} // policy name → line of its metadata.name
	for _, root := range docs {
		d := &docDecoder{errs: verr, root: root, lines: map[string]int{}, set: map[string]bool{}, bad: map[string]bool{}, budget: maxParamsNodes}
		p := &Policy{}
		d.decode(root, reflect.ValueOf(p).Elem(), "")
		d.validate(p)
		if name := p.Metadata.Name; name != "" {
			if first, dup := names[name]; dup {
				d.add("metadata.name", "duplicate policy name %q (also defined at line %d): names are unique within a file", name, first)
			} else {
				names[name] = d.line("metadata.name")
			}
		}
		d.applyDefaults(p)
		out = append(out, p)
	}
	if len(verr.Errors) == 0 && len(out) == 0 {
		verr.add(0, "", `no policies found: a file holds one or more Policy documents separated by "---"`)
	}
	if len(verr.Errors) > 0 {
		verr.sort()
		return nil, verr
	}
	return out, nil
}

var yamlErrLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// readDocuments splits the stream into document roots, skipping empty
// documents. A syntax error is recorded and ends the stream.
func readDocuments(content []byte, verr *ValidationError) (docs []*yaml.Node) {
	defer func() {
		// The YAML library must not take the control plane down on a
		// hostile file; report it like a syntax error.
		if r := recover(); r != nil {
			verr.add(0, "", "invalid YAML: parser failed: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(content))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			msg := strings.TrimPrefix(err.Error(), "yaml: ")
			line := 0
			if m := yamlErrLine.FindStringSubmatch(err.Error()); m != nil {
				line, _ = strconv.Atoi(m[1])
				msg = m[2]
			}
			verr.add(line, "", "invalid YAML: %s", msg)
			return docs
		}
		if len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
			continue // empty document, or only comments
		}
		docs = append(docs, root)
	}
}

// docDecoder decodes one document into a Policy, recording where every
// field is so that later checks can name its line.
type docDecoder struct {
	errs   *ValidationError
	root   *yaml.Node
	lines  map[string]int  // field path → line of its key (or list item)
	set    map[string]bool // field path → present with a non-null value
	bad    map[string]bool // field path → could not be decoded (already reported)
	budget int             // nodes left for free-form params (alias bombs)
}

// add records a semantic problem of path, unless path or one of its parents
// could not be decoded: that error is already reported, and more about the
// same value would be noise.
func (d *docDecoder) add(path, format string, args ...any) {
	for p := path; ; p = parentPath(p) {
		if d.bad[p] {
			return
		}
		if p == "" {
			break
		}
	}
	d.errs.add(d.line(path), path, format, args...)
}

// addAt records a decoding problem at the line of node n and marks path bad.
func (d *docDecoder) addAt(n *yaml.Node, path, format string, args ...any) {
	d.bad[path] = true
	d.errs.add(n.Line, path, format, args...)
}

// line returns the line of path, or of its closest present parent (a
// missing field is reported at the line of the mapping it should be in).
func (d *docDecoder) line(path string) int {
	for {
		if l, ok := d.lines[path]; ok {
			return l
		}
		if path == "" {
			return d.root.Line
		}
		path = parentPath(path)
	}
}

// present reports whether path was written with a non-null value.
func (d *docDecoder) present(path string) bool { return d.set[path] }

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func joinPath(base, name string) string {
	if base == "" {
		return name
	}
	return base + "." + name
}

var plainKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

// keyPath is the path of a free-form map key: base.key, or base["a.b/c"].
func keyPath(base, key string) string {
	if plainKey.MatchString(key) {
		return joinPath(base, key)
	}
	return base + "[" + strconv.Quote(key) + "]"
}

var (
	durationType      = reflect.TypeFor[Duration]()
	maxConcurrentType = reflect.TypeFor[MaxConcurrent]()
	paramsType        = reflect.TypeFor[map[string]any]()
)

// resolve follows aliases.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what a node is, for "want X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return strconv.Quote(n.Value)
		case "!!null":
			return "null"
		}
		return n.Value
	}
	return "an unsupported YAML node"
}

// decode sets v from n, strictly: unknown fields, duplicate fields and
// values of the wrong type are errors. A null value leaves v at its zero
// value.
func (d *docDecoder) decode(n *yaml.Node, v reflect.Value, path string) {
	n = resolve(n)
	if n == nil || n.Kind == yaml.AliasNode {
		d.errs.add(d.line(path), path, "alias nested too deeply")
		return
	}
	if isNull(n) {
		return
	}
	if path != "" {
		d.set[path] = true
	}
	switch v.Type() {
	case durationType:
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!str" && n.ShortTag() != "!!int") {
			d.addAt(n, path, `want a duration such as "5s" or "10m", got %s`, describe(n))
			return
		}
		dur, err := ParseDuration(n.Value)
		if err != nil {
			d.addAt(n, path, "%v", err)
			return
		}
		v.SetInt(int64(dur))
		return
	case maxConcurrentType:
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!str" && n.ShortTag() != "!!int") {
			d.addAt(n, path, `want a number such as 3 or a percent such as "10%%", got %s`, describe(n))
			return
		}
		v.SetString(strings.TrimSpace(n.Value))
		return
	case paramsType:
		if n.Kind != yaml.MappingNode {
			d.addAt(n, path, "want a mapping of parameters, got %s", describe(n))
			return
		}
		if m, ok := d.jsonValue(n, path, 0); ok {
			v.Set(reflect.ValueOf(m))
		}
		return
	}

	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Map: // map[string]string
		if n.Kind != yaml.MappingNode {
			d.addAt(n, path, "want a mapping, got %s", describe(n))
			return
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := resolve(n.Content[i]), resolve(n.Content[i+1])
			if k == nil || val == nil || k.Kind != yaml.ScalarNode {
				d.addAt(n.Content[i], path, "mapping keys must be strings")
				continue
			}
			kp := keyPath(path, k.Value)
			if first, dup := seen[k.Value]; dup {
				d.addAt(k, kp, "duplicate key (first set at line %d)", first)
				continue
			}
			seen[k.Value] = k.Line
			d.lines[kp] = k.Line
			if val.Kind != yaml.ScalarNode || isNull(val) {
				d.addAt(val, kp, "want a string value, got %s", describe(val))
				continue
			}
			d.set[kp] = true
			v.SetMapIndex(reflect.ValueOf(k.Value), reflect.ValueOf(val.Value))
		}
	case reflect.Slice: // []string
		if n.Kind != yaml.SequenceNode {
			d.addAt(n, path, "want a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			ip := fmt.Sprintf("%s[%d]", path, i)
			d.lines[ip] = item.Line
			d.decode(item, s.Index(i), ip)
		}
		v.Set(s)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.addAt(n, path, "want a string, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			d.addAt(n, path, "want true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int:
		var i int64
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
			d.addAt(n, path, "want an integer, got %s", describe(n))
			return
		}
		if i > math.MaxInt32 || i < math.MinInt32 {
			d.addAt(n, path, "integer %s is out of range", n.Value)
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		var f float64
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") || n.Decode(&f) != nil {
			d.addAt(n, path, "want a number, got %s", describe(n))
			return
		}
		v.SetFloat(f)
	default:
		// Only reachable if a field of an unsupported type is added.
		panic(fmt.Sprintf("policy: no decoder for %s at %s", v.Type(), path))
	}
}

type structInfo struct {
	index map[string]int // yaml name → field index
	names []string       // yaml names in declaration order
}

func fieldsOf(t reflect.Type) structInfo {
	si := structInfo{index: map[string]int{}}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		si.index[name] = i
		si.names = append(si.names, name)
	}
	return si
}

func (d *docDecoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		what := "the document"
		if path != "" {
			what = path
		}
		d.addAt(n, path, "want a mapping for %s, got %s", what, describe(n))
		return
	}
	si := fieldsOf(v.Type())
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := resolve(n.Content[i]), n.Content[i+1]
		if k == nil || k.Kind != yaml.ScalarNode {
			d.addAt(n.Content[i], path, "mapping keys must be plain field names")
			continue
		}
		fp := joinPath(path, k.Value)
		if k.Value == "<<" {
			d.addAt(k, path, "merge keys (<<) are not supported: write the fields out")
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.addAt(k, fp, "duplicate field (first set at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		idx, ok := si.index[k.Value]
		if !ok {
			if s := suggest(k.Value, si.names); s != "" {
				d.addAt(k, fp, "unknown field (did you mean %q?)", s)
			} else {
				d.addAt(k, fp, "unknown field (want one of %s)", strings.Join(si.names, ", "))
			}
			continue
		}
		d.lines[fp] = k.Line
		d.decode(val, v.Field(idx), fp)
	}
}

// jsonValue converts free-form YAML (action params) to JSON values: nil,
// bool, float64, string, []any, map[string]any.
func (d *docDecoder) jsonValue(n *yaml.Node, path string, depth int) (any, bool) {
	d.budget--
	if d.budget < 0 {
		if d.budget == -1 {
			d.addAt(n, path, "too large: more than %d values (or aliases that expand to them)", maxParamsNodes)
		}
		return nil, false
	}
	if depth > 64 {
		d.addAt(n, path, "nested too deeply")
		return nil, false
	}
	n = resolve(n)
	if n == nil || n.Kind == yaml.AliasNode {
		d.errs.add(d.line(path), path, "alias nested too deeply")
		return nil, false
	}
	d.lines[path] = n.Line
	switch n.Kind {
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return nil, true
		case "!!bool":
			var b bool
			if err := n.Decode(&b); err != nil {
				d.addAt(n, path, "invalid boolean %q", n.Value)
				return nil, false
			}
			return b, true
		case "!!int":
			var i int64
			if err := n.Decode(&i); err != nil || i > maxExactFloatInteger || i < -maxExactFloatInteger {
				d.addAt(n, path, "integer %s is out of range (at most ±2^53); quote it to pass a string", n.Value)
				return nil, false
			}
			return float64(i), true
		case "!!float":
			var f float64
			if err := n.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				d.addAt(n, path, "number %s cannot be represented in JSON; quote it to pass a string", n.Value)
				return nil, false
			}
			return f, true
		default: // strings, and timestamps or binary kept as written
			return n.Value, true
		}
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		ok := true
		for i, item := range n.Content {
			v, good := d.jsonValue(item, fmt.Sprintf("%s[%d]", path, i), depth+1)
			ok = ok && good
			out = append(out, v)
		}
		return out, ok
	case yaml.MappingNode:
		out := make(map[string]any, len(n.Content)/2)
		seen := map[string]int{}
		ok := true
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := resolve(n.Content[i])
			if k == nil || k.Kind != yaml.ScalarNode {
				d.addAt(n.Content[i], path, "mapping keys must be strings")
				ok = false
				continue
			}
			kp := keyPath(path, k.Value)
			if k.Value == "<<" {
				d.addAt(k, path, "merge keys (<<) are not supported: write the fields out")
				ok = false
				continue
			}
			if first, dup := seen[k.Value]; dup {
				d.addAt(k, kp, "duplicate key (first set at line %d)", first)
				ok = false
				continue
			}
			seen[k.Value] = k.Line
			v, good := d.jsonValue(n.Content[i+1], kp, depth+1)
			d.lines[kp] = k.Line
			ok = ok && good
			out[k.Value] = v
		}
		return out, ok
	}
	d.addAt(n, path, "unsupported YAML value")
	return nil, false
}

// suggest returns the known name closest to an unknown one, if it is close
// enough to be a typo.
func suggest(got string, names []string) string {
	best, bestDist := "", 3
	g := strings.ToLower(got)
	for _, n := range names {
		if dist := editDistance(g, strings.ToLower(n)); dist < bestDist {
			best, bestDist = n, dist
		}
	}
	return best
}

// editDistance is the Levenshtein distance, with an adjacent swap counting
// as one edit.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	prev2 := make([]int, len(b)+1)
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
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// sortedKeys returns the keys of m, sorted.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
