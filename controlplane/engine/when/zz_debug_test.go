package when

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
)

func FuzzDebug(f *testing.F) {
	f.Add(`result.status != "ok"`)
	f.Fuzz(func(t *testing.T, expr string) {
		os.WriteFile(fmt.Sprintf("/tmp/fuzzcur.%d", os.Getpid()), []byte(expr), 0o644)
		err := Validate(expr)
		if err == nil && strings.TrimSpace(expr) != "" {
			p, _ := Compile(expr)
			os.WriteFile(fmt.Sprintf("/tmp/fuzzcur.%d.eval", os.Getpid()), []byte(expr), 0o644)
			_, _ = p.Eval(context.Background(), Input{Status: "critical", Output: expr, Metrics: map[string]float64{"x": 1}, Labels: map[string]string{"a": "b"}})
			os.Remove(fmt.Sprintf("/tmp/fuzzcur.%d.eval", os.Getpid()))
		}
	})
}
