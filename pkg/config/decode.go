package config

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// maxDepth bounds how deep the decoder follows nested nodes and aliases; the
// schema itself is far shallower.
const maxDepth = 64

// minWork and workPerNode bound how many nodes one decode visits: aliases
// and merge keys may make a file expand to at most workPerNode times its own
// node count (or minWork), never into a huge tree.
const (
	minWork     = 10000
	workPerNode = 4
)

// decoder walks a YAML node tree against a Go type by reflection and fills a
// value. Unlike yaml.v3's own decoder it keeps going after a problem, so one
// run reports every unknown key and every badly typed value, each with its
// line and key path. It also records the line of every key it sees, which
// later lets Validate point at lines.
type decoder struct {
	errs  *Errors
	lines map[string]int  // key path → line of the key (or list item)
	given map[string]bool // key path → a non-null value was written
	bad   map[string]bool // key paths that already have a decode problem
	// expanding holds the anchors being expanded, to refuse an alias that
	// refers to a node containing itself.
	expanding map[*yaml.Node]bool
	// fromEnv holds the values interpolate expanded references in, and
	// envAt the key paths decode found them at (an alias too).
	fromEnv map[*yaml.Node]envValue
	envAt   map[string]envValue
	depth   int
	work    int
	maxWork int
}

// tooMuch counts a visited node and reports, once, when the budget is spent.
func (d *decoder) tooMuch(n *yaml.Node, path string) bool {
	d.work++
	if d.work == d.maxWork {
		d.fail(n, path, "too many values: aliases expand the file to more than %d", d.maxWork)
	}
	return d.work >= d.maxWork
}

// newDecoder returns a decoder for the tree under root.
func newDecoder(root *yaml.Node) *decoder {
	return &decoder{
		maxWork:   max(minWork, workPerNode*countNodes(root, 0)),
		errs:      &Errors{},
		lines:     map[string]int{},
		given:     map[string]bool{},
		bad:       map[string]bool{},
		expanding: map[*yaml.Node]bool{},
		fromEnv:   map[*yaml.Node]envValue{},
		envAt:     map[string]envValue{},
	}
}

// fail records a problem with the value at path.
func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.errs.add(n.Line, path, format, args...)
	d.bad[path] = true
	// A value that could not be read counts as absent, so its default
	// applies and validation does not complain about a zero.
	d.given[path] = false
}

// decode fills v (addressable) from n.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if d.tooMuch(n, path) {
		return
	}
	if d.depth >= maxDepth {
		d.fail(n, path, "nested too deeply")
		return
	}
	d.depth++
	defer func() { d.depth-- }()

	if n.Kind == yaml.AliasNode {
		if n.Alias == nil || d.expanding[n.Alias] {
			d.fail(n, path, "alias *%s refers to a value that contains it", n.Value)
			return
		}
		d.expanding[n.Alias] = true
		defer delete(d.expanding, n.Alias)
		d.decode(n.Alias, v, path)
		return
	}
	if ev, ok := d.fromEnv[n]; ok {
		d.envAt[path] = ev
	}
	if isNull(n) {
		return // null leaves the value unset
	}

	if v.CanAddr() && v.Addr().Type().Implements(unmarshalerType) {
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "want a single value, not a %s", kindName(n))
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.fail(n, path, "%s", strings.TrimPrefix(err.Error(), "yaml: "))
		}
		return
	}

	switch v.Kind() {
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		d.decode(n, p.Elem(), path)
		v.Set(p)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	case reflect.Map:
		d.decodeMap(n, v, path)
	default:
		d.decodeScalar(n, v, path)
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "want a mapping of keys, not a %s", kindName(n))
		return
	}
	fields := fieldsOf(v.Type())
	for _, e := range d.entries(n, path) {
		p := join(path, e.name)
		i, ok := fields.index[e.name]
		if !ok {
			d.errs.add(e.key.Line, p, "unknown key%s", suggest(e.name, fields.names))
			d.bad[p] = true
			continue
		}
		d.lines[p] = e.key.Line
		d.given[p] = !isNull(resolve(e.value))
		d.decode(e.value, v.Field(i), p)
	}
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "want a list, not a %s", kindName(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		d.lines[p] = item.Line
		d.given[p] = !isNull(resolve(item))
		d.decode(item, s.Index(i), p)
	}
	v.Set(s)
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "want a mapping of keys, not a %s", kindName(n))
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		d.fail(n, path, "unsupported map key type %s", v.Type().Key())
		return
	}
	m := reflect.MakeMap(v.Type())
	for _, e := range d.entries(n, path) {
		p := join(path, e.name)
		d.lines[p] = e.key.Line
		d.given[p] = !isNull(resolve(e.value))
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(e.value, elem, p)
		m.SetMapIndex(reflect.ValueOf(e.name).Convert(v.Type().Key()), elem)
	}
	v.Set(m)
}

func (d *decoder) decodeScalar(n *yaml.Node, v reflect.Value, path string) {
	want := wantName(v.Kind())
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, "want %s, not a %s", want, kindName(n))
		return
	}
	s := n.Value
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
		return
	case reflect.Bool:
		switch strings.ToLower(s) {
		case "true", "yes", "on":
			v.SetBool(true)
			return
		case "false", "no", "off":
			v.SetBool(false)
			return
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if i, ok := parseInt(s); ok && !v.OverflowInt(i) {
			v.SetInt(i)
			return
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if i, ok := parseInt(s); ok && i >= 0 && !v.OverflowUint(uint64(i)) {
			v.SetUint(uint64(i))
			return
		}
	case reflect.Float32, reflect.Float64:
		if f, err := strconv.ParseFloat(strings.ReplaceAll(s, "_", ""), 64); err == nil &&
			!math.IsInf(f, 0) && !math.IsNaN(f) && !v.OverflowFloat(f) {
			if RoundsToZero(s) {
				d.fail(n, path, "%q is too small to hold: it would read as 0, which means none", s)
				return
			}
			v.SetFloat(f)
			return
		}
	default:
		d.fail(n, path, "unsupported type %s", v.Type())
		return
	}
	d.fail(n, path, "want %s, got %q", want, s)
}

// RoundsToZero reports whether s, a number, is not zero but reads as 0 in
// a float64 (1e-400): a rate so written would be taken for "no limit".
func RoundsToZero(s string) bool {
	s = strings.ToLower(strings.ReplaceAll(s, "_", ""))
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != 0 {
		return false
	}
	s = strings.TrimLeft(s, "+-")
	if h, ok := strings.CutPrefix(s, "0x"); ok {
		m, _, _ := strings.Cut(h, "p")
		return strings.ContainsAny(m, "123456789abcdef")
	}
	m, _, _ := strings.Cut(s, "e")
	return strings.ContainsAny(m, "123456789")
}

// countNodes counts the nodes under n without following aliases.
func countNodes(n *yaml.Node, depth int) int {
	if n == nil || depth > maxDepth {
		return 0
	}
	c := 1
	for _, k := range n.Content {
		c += countNodes(k, depth+1)
	}
	return c
}

// parseInt accepts 100, 1_000_000, 0x10 and integral floats such as 1e6.
func parseInt(s string) (int64, bool) {
	s = strings.ReplaceAll(s, "_", "")
	if i, err := strconv.ParseInt(s, 0, 64); err == nil {
		return i, true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
		return 0, false
	}
	return int64(f), true
}

// entry is one key: value pair of a mapping, after merge keys are applied.
type entry struct {
	name       string
	key, value *yaml.Node
}

// entries lists n's pairs in order, reporting duplicate and non-scalar keys.
// Pairs brought in by a merge key ("<<: *base") come after the explicit ones
// and never override them.
func (d *decoder) entries(n *yaml.Node, path string) []entry {
	var out []entry
	seen := map[string]int{}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if d.tooMuch(k, path) {
			return out
		}
		if k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge" {
			merges = append(merges, val)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "want a plain key, not a %s", kindName(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.errs.add(k.Line, join(path, k.Value), "duplicate key (first set on line %d)", first)
			d.bad[join(path, k.Value)] = true
			continue
		}
		seen[k.Value] = k.Line
		out = append(out, entry{name: k.Value, key: k, value: val})
	}
	d.depth++
	defer func() { d.depth-- }()
	for _, m := range merges {
		for _, src := range d.mergeSources(m, path) {
			for _, e := range d.entries(src, path) {
				if _, dup := seen[e.name]; dup {
					continue
				}
				seen[e.name] = e.key.Line
				out = append(out, e)
			}
		}
	}
	return out
}

// mergeSources returns the mappings a merge key's value names: one mapping
// or a list of them.
func (d *decoder) mergeSources(m *yaml.Node, path string) []*yaml.Node {
	if d.depth >= maxDepth {
		d.fail(m, path, "nested too deeply")
		return nil
	}
	r := resolve(m)
	switch {
	case r == nil:
		d.fail(m, path, "alias *%s refers to a value that contains it", m.Value)
	case r.Kind == yaml.MappingNode:
		return []*yaml.Node{r}
	case r.Kind == yaml.SequenceNode:
		var out []*yaml.Node
		for _, item := range r.Content {
			if ri := resolve(item); ri != nil && ri.Kind == yaml.MappingNode {
				out = append(out, ri)
			} else {
				d.fail(item, path, "merge key (<<) wants mappings")
			}
		}
		return out
	default:
		d.fail(m, path, "merge key (<<) wants a mapping or a list of mappings")
	}
	return nil
}

// resolve follows aliases; it returns nil for an alias chain that loops.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode; i++ {
		if i > maxDepth {
			return nil
		}
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "single value"
	case yaml.AliasNode:
		return "alias"
	}
	return "document"
}

func wantName(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	}
	return "a single value"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// structFields maps a struct's yaml key names to field indexes.
type structFields struct {
	index map[string]int
	names []string
}

var fieldCache sync.Map // reflect.Type → *structFields

func fieldsOf(t reflect.Type) *structFields {
	if f, ok := fieldCache.Load(t); ok {
		return f.(*structFields)
	}
	f := &structFields{index: map[string]int{}}
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		f.index[name] = i
		f.names = append(f.names, name)
	}
	fieldCache.Store(t, f)
	return f
}

// suggest returns ` (did you mean "x"?)` when a known key is close to name.
func suggest(name string, known []string) string {
	if len(name) < 4 {
		return ""
	}
	best, bestDist := "", max(2, len(name)/3)+1
	norm := strings.ToLower(strings.ReplaceAll(name, "-", "_"))
	for _, k := range known {
		if k == norm {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
		if dist := editDistance(norm, k); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
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
