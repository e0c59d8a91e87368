package main

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/docker/go-units"
	"github.com/joho/godotenv"

	"github.com/codegw/codegw/app"
)

// LoadConfig reads .env (when present; the real environment wins) and the
// environment over app.DefaultConfig, and validates the result. Every
// error names its variable, and all of them are reported at once.
func LoadConfig() (app.Config, error) {
	_ = godotenv.Load() // a missing .env is fine
	return parseConfig(os.Environ())
}

// parseConfig reads the variables in environ ("NAME=value") over the
// defaults. Values are trimmed; an empty value keeps the default, except
// EXECUTOR_PRELOAD, where it means "preload nothing", and SNAPSHOT_DIR,
// where it turns snapshots off.
func parseConfig(environ []string) (app.Config, error) {
	vars := env.ToMap(environ)
	for k, v := range vars {
		vars[k] = strings.TrimSpace(v)
	}
	c := app.DefaultConfig()
	err := env.ParseWithOptions(&c, env.Options{Environment: vars, FuncMap: parsers})
	if v, ok := vars["EXECUTOR_PRELOAD"]; ok && v == "" {
		c.Preload = []string{}
	}
	if v, ok := vars["SNAPSHOT_DIR"]; ok && v == "" {
		c.SnapshotDir = ""
	}
	if err != nil { // a value that does not parse keeps its default: check the rest too
		return c, errors.Join(configErrors(err, vars), c.Validate())
	}
	return c, c.Validate()
}

// parsers read the types whose environment syntax is ours: durations in
// seconds or Go syntax, byte counts with units, lists without blanks.
var parsers = map[reflect.Type]env.ParserFunc{
	reflect.TypeFor[time.Duration](): func(v string) (any, error) {
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			return time.Duration(f * float64(time.Second)), nil
		}
		return time.ParseDuration(v)
	},
	reflect.TypeFor[app.Bytes](): func(v string) (any, error) {
		n, err := units.RAMInBytes(v)
		return app.Bytes(n), err
	},
	reflect.TypeFor[[]string](): func(v string) (any, error) {
		out := []string{}
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return out, nil
	},
}

// configErrors rewrites the library's errors, which name struct fields,
// into messages that name the variable and the value and say what it
// should be.
func configErrors(err error, vars map[string]string) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return fmt.Errorf("config: %w", err)
	}
	msgs := make([]string, 0, len(agg.Errors))
	for _, e := range agg.Errors {
		var pe env.ParseError
		if !errors.As(e, &pe) {
			msgs = append(msgs, e.Error())
			continue
		}
		f, _ := reflect.TypeFor[app.Config]().FieldByName(pe.Name)
		name := f.Tag.Get("env")
		msgs = append(msgs, fmt.Sprintf("%s=%q is not %s", name, vars[name], kindOf(pe.Type)))
	}
	return fmt.Errorf("config: %s", strings.Join(msgs, "; "))
}

func kindOf(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "a number of seconds or a duration"
	case t == reflect.TypeFor[app.Bytes]():
		return "a byte count like 512m"
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int64:
		return "an integer"
	case reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "a boolean"
	}
	return "a " + t.String()
}
