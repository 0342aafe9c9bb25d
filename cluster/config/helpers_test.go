package config

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const validFile = "testdata/observer.yaml"

// testKey is the key in testdata/observer.yaml: bytes 0x00..0x1f.
const testKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

func readValid(t testing.TB) []byte {
	t.Helper()
	data, err := os.ReadFile(validFile)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// mutation edits the generic form of the valid config.
type mutation func(t testing.TB, doc map[string]any)

// pathToken splits "groups[0].members[1].name" into keys and indexes.
var pathToken = regexp.MustCompile(`[^.\[\]]+|\[\d+\]`)

func tokens(path string) []any {
	var out []any
	for _, tok := range pathToken.FindAllString(path, -1) {
		if strings.HasPrefix(tok, "[") {
			i, _ := strconv.Atoi(strings.Trim(tok, "[]"))
			out = append(out, i)
		} else {
			out = append(out, tok)
		}
	}
	return out
}

// edit navigates to the container of the last path element (creating
// missing maps on the way) and calls fn with it and the last element.
func edit(t testing.TB, doc map[string]any, path string, fn func(container any, last any)) {
	t.Helper()
	toks := tokens(path)
	var cur any = doc
	for _, tok := range toks[:len(toks)-1] {
		switch c := cur.(type) {
		case map[string]any:
			next, ok := c[tok.(string)]
			if !ok {
				next = map[string]any{}
				c[tok.(string)] = next
			}
			cur = next
		case []any:
			cur = c[tok.(int)]
		default:
			t.Fatalf("path %s: cannot descend into %T", path, cur)
		}
	}
	fn(cur, toks[len(toks)-1])
}

// set sets path to v; for a list index it replaces the element.
func set(path string, v any) mutation {
	return func(t testing.TB, doc map[string]any) {
		edit(t, doc, path, func(c any, last any) {
			switch c := c.(type) {
			case map[string]any:
				c[last.(string)] = v
			case []any:
				c[last.(int)] = v
			}
		})
	}
}

// del removes a key from its mapping.
func del(path string) mutation {
	return func(t testing.TB, doc map[string]any) {
		edit(t, doc, path, func(c any, last any) {
			delete(c.(map[string]any), last.(string))
		})
	}
}

// truncate keeps the first n elements of the list at path.
func truncate(path string, n int) mutation {
	return func(t testing.TB, doc map[string]any) {
		edit(t, doc, path, func(c any, last any) {
			m := c.(map[string]any)
			m[last.(string)] = m[last.(string)].([]any)[:n]
		})
	}
}

// addObserver appends a well-formed observer with the given number.
func addObserver(n int) mutation {
	return func(t testing.TB, doc map[string]any) {
		doc["observers"] = append(doc["observers"].([]any), map[string]any{
			"id":     "obs" + strconv.Itoa(n),
			"raft":   "127.0.0.1:" + strconv.Itoa(7100+n),
			"gossip": "127.0.0.1:" + strconv.Itoa(7200+n),
			"grpc":   "127.0.0.1:" + strconv.Itoa(7300+n),
		})
	}
}

// mutate returns the valid config with the mutations applied, as YAML.
func mutate(t testing.TB, muts ...mutation) []byte {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal(readValid(t), &doc); err != nil {
		t.Fatal(err)
	}
	for _, m := range muts {
		m(t, doc)
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fieldErrors flattens err into its *FieldError leaves.
func fieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		switch u := e.(type) {
		case *FieldError:
			out = append(out, u)
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}

// fieldError returns the problem reported for field, failing the test
// (and showing everything that was reported) if there is none.
func fieldError(t testing.TB, err error, field string) *FieldError {
	t.Helper()
	for _, fe := range fieldErrors(err) {
		if fe.Field == field {
			return fe
		}
	}
	t.Fatalf("no error for field %q; got:\n%v", field, err)
	return nil
}
