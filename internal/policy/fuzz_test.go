package policy

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: Parse never panics, returns policies or an error (never both,
// never neither), and every policy it returns converts to JSON and back.
//
//	go test -run '^$' -fuzz FuzzParse ./internal/policy/
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(examplePath("*.yaml"))
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	for _, s := range []string{
		base,
		base + "---\n" + edit("name: web", "name: web-2"),
		edit("type: http", "type: htp"),
		edit("    timeout: 30s\n", "    timeout: 30s\n    params: {a: &a [1, 2], b: *a, c: {d: null, e: 1.5}}\n"),
		edit("  check:\n", "  chekc:\n"),
		"",
		"---\n---\n",
		"- a\n",
		"a: &a [*a]\n",
		"spec: {check: &c {type: tcp, tcp: *c}}\n",
		"apiVersion: tend.dev/v1\nkind: Policy\n  bad: : indent\n",
		"{",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, content []byte) {
		ps, err := Parse("fuzz.yaml", content)
		if err != nil {
			if ps != nil {
				t.Fatalf("policies returned with an error: %v", err)
			}
			return
		}
		if len(ps) == 0 {
			t.Fatal("no policies and no error")
		}
		for _, p := range ps {
			j, err := p.SpecJSON()
			if err != nil {
				t.Fatalf("SpecJSON: %v", err)
			}
			back, err := FromSpecJSON(p.Name(), 1, j)
			if err != nil {
				t.Fatalf("FromSpecJSON(%s): %v", j, err)
			}
			j2, err := back.SpecJSON()
			if err != nil || string(j) != string(j2) {
				t.Fatalf("round trip changed the spec:\n%s\n%s (%v)", j, j2, err)
			}
			if cs := p.CheckSpec(1); cs.GetCheck() == nil {
				t.Fatalf("CheckSpec without a check: %s", j)
			}
		}
	})
}
