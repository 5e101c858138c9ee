// Command kstatus judges a Kubernetes object the way GitOps tools do, for the end-to-end
// tests (tests/gitops_status.rs):
//
//	kstatus compute                     kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute,
//	                                    what Flux's health checks and `kubectl wait`-like tools use)
//	kstatus argo-health --script FILE   an Argo CD custom health check (health.lua), run with
//	  [--use-open-libs]                 gopher-lua as Argo CD runs it: the object in the global `obj`
//
// Each reads one object as JSON on stdin and prints {"status": ..., "message": ...} as JSON.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: kstatus compute | kstatus argo-health --script FILE"))
	}
	obj, err := readObject(os.Stdin)
	if err != nil {
		fail(err)
	}
	var res result
	switch os.Args[1] {
	case "compute":
		res, err = compute(obj)
	case "argo-health":
		flags := flag.NewFlagSet("argo-health", flag.ExitOnError)
		script := flags.String("script", "", "the health.lua to run")
		openLibs := flags.Bool("use-open-libs", false, "as the override's useOpenLibs: true")
		_ = flags.Parse(os.Args[2:])
		if *script == "" {
			fail(errors.New("argo-health: --script FILE is required"))
		}
		res, err = argoHealth(obj, *script, *openLibs)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(1)
}

func readObject(r io.Reader) (map[string]interface{}, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var obj map[string]interface{}
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("stdin is not a JSON object: %w", err)
	}
	return obj, nil
}

func compute(obj map[string]interface{}) (result, error) {
	// Through the unstructured JSON decoder, as a client would hand it over (int64 numbers).
	u := &unstructured.Unstructured{}
	data, err := json.Marshal(obj)
	if err != nil {
		return result{}, err
	}
	if err := u.UnmarshalJSON(data); err != nil {
		return result{}, err
	}
	res, err := status.Compute(u)
	if err != nil {
		return result{}, err
	}
	return result{Status: res.Status.String(), Message: res.Message}, nil
}

// The statuses Argo CD accepts from a health script (gitops-engine's health.HealthStatusCode).
var argoStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

// argoHealth runs the script as Argo CD's util/lua runs a health check from argocd-cm: a
// VM without the standard libraries (unless useOpenLibs), then package, base and table opened
// (Argo CD adds a reduced os, which a health check has no use for: left out here, so a script
// that needs it fails), the object in the global `obj`, a one-second limit, and the returned
// table read as {status, message}; a status Argo CD does not know becomes Unknown.
func argoHealth(obj map[string]interface{}, script string, openLibs bool) (result, error) {
	src, err := os.ReadFile(script)
	if err != nil {
		return result{}, err
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true},
			lua.LString(lib.name)); err != nil {
			return result{}, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(string(src)); err != nil {
		return result{}, fmt.Errorf("%s: %w", script, err)
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return result{}, fmt.Errorf("expect table output from Lua script, not %s", l.Get(-1).Type())
	}
	res := result{
		Status:  lua.LVAsString(ret.RawGetString("status")),
		Message: lua.LVAsString(ret.RawGetString("message")),
	}
	if !argoStatuses[res.Status] {
		return result{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return res, nil
}

// toLua converts decoded JSON into Lua values: objects and arrays become tables (arrays
// indexed from 1), null becomes nil.
func toLua(l *lua.LState, v interface{}) lua.LValue {
	switch v := v.(type) {
	case map[string]interface{}:
		t := l.CreateTable(0, len(v))
		for k, e := range v {
			t.RawSetString(k, toLua(l, e))
		}
		return t
	case []interface{}:
		t := l.CreateTable(len(v), 0)
		for _, e := range v {
			t.Append(toLua(l, e))
		}
		return t
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	default:
		return lua.LNil
	}
}
