package zzproto

import (
	"reflect"
	"testing"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"
)

type Result struct {
	Status  string             `cel:"status"`
	Output  string             `cel:"output"`
	Metrics map[string]float64 `cel:"metrics"`
}

func TestProto(t *testing.T) {
	env, err := cel.NewEnv(
		ext.NativeTypes(reflect.TypeFor[Result](), ext.ParseStructTags(true)),
		cel.Variable("result", cel.ObjectType("zzproto.Result")),
		cel.Variable("labels", cel.MapType(cel.StringType, cel.StringType)),
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []string{`result.stauts == "ok"`, `result.metrics["x"] > 90`, `result.metrics.x > 90.0 && labels.role == "web"`, `result.output.contains("x")`, `result.status`, `1 +`, `result.metrics.exists(k, k == "x")`, `"x" in result.metrics`, `has(result.metrics.x)`} {
		ast, iss := env.Compile(e)
		if iss.Err() != nil {
			t.Logf("%s: %v", e, iss.Err())
			continue
		}
		t.Logf("%s: type %v", e, ast.OutputType())
		p, err := env.Program(ast, cel.CostLimit(1000))
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := p.Eval(map[string]any{"result": Result{Status: "ok", Output: "x", Metrics: map[string]float64{"x": 91}}, "labels": map[string]string{"role": "web"}})
		t.Logf("  -> %v %v", out, err)
	}
}
