package zzproto

import (
	"reflect"
	"testing"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"
)

type act struct {
	r      *Result
	labels map[string]string
}

func (a *act) ResolveName(n string) (any, bool) {
	switch n {
	case "result":
		return a.r, true
	case "labels":
		return a.labels, true
	}
	return nil, false
}
func (a *act) Parent() interpreter.Activation { return nil }

func BenchmarkNative(b *testing.B) {
	env, _ := cel.NewEnv(
		ext.NativeTypes(reflect.TypeFor[Result](), ext.ParseStructTags(true)),
		cel.CrossTypeNumericComparisons(true),
		cel.Variable("result", cel.ObjectType("zzproto.Result")),
		cel.Variable("labels", cel.MapType(cel.StringType, cel.StringType)),
	)
	ast, iss := env.Compile(`result.metrics.x > 90 && labels.role == "web" && result.status != "ok"`)
	if iss.Err() != nil {
		b.Fatal(iss.Err())
	}
	p, _ := env.Program(ast)
	r := &Result{Status: "critical", Output: "x", Metrics: map[string]float64{"x": 91}}
	a := &act{r: r, labels: map[string]string{"role": "web"}}
	b.ReportAllocs()
	for b.Loop() {
		out, _, err := p.Eval(a)
		if err != nil || out.Value() != true {
			b.Fatal(out, err)
		}
	}
}

func BenchmarkMap(b *testing.B) {
	env, _ := cel.NewEnv(
		cel.CrossTypeNumericComparisons(true),
		cel.Variable("result", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("labels", cel.MapType(cel.StringType, cel.StringType)),
	)
	ast, iss := env.Compile(`result.metrics.x > 90 && labels.role == "web" && result.status != "ok"`)
	if iss.Err() != nil {
		b.Fatal(iss.Err())
	}
	p, _ := env.Program(ast)
	m := map[string]float64{"x": 91}
	labels := map[string]string{"role": "web"}
	b.ReportAllocs()
	for b.Loop() {
		out, _, err := p.Eval(map[string]any{"result": map[string]any{"status": "critical", "output": "x", "metrics": m}, "labels": labels})
		if err != nil || out.Value() != true {
			b.Fatal(out, err)
		}
	}
}
