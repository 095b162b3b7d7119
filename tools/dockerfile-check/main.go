// dockerfile-check: does a Dockerfile build with Debian 12's docker.io (Docker 20.10, whose
// default builder is the classic one, as is docker-compose 1.29's)? It parses with the Dockerfile
// parser of the BuildKit commit Docker 20.10.24 vendors (eeb7b65ab7d6, pinned in go.mod), then refuses
// what the classic builder's dispatchers (builder/dockerfile/dispatchers.go of that release)
// refuse although that parser accepts it: any flag on RUN (--mount, --network, --security) and
// --chmod on COPY and ADD. Heredocs and COPY --link are newer than that parser, which refuses them.
//
//	dockerfile-check FILE...   exit 0 when every file passes; else each problem on stderr, exit 1
package main

import (
	"fmt"
	"os"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

func check(path string) []string {
	file, err := os.Open(path)
	if err != nil {
		return []string{err.Error()}
	}
	defer file.Close()
	ast, err := parser.Parse(file)
	if err != nil {
		return []string{err.Error()}
	}
	stages, _, err := instructions.Parse(ast.AST)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	needsBuildKit := func(line int, what string) {
		problems = append(problems, fmt.Sprintf("line %d: %s needs BuildKit (the classic builder refuses it)", line, what))
	}
	for _, stage := range stages {
		for _, command := range stage.Commands {
			line := 0
			if located, ok := command.(interface{ Location() []parser.Range }); ok && len(located.Location()) > 0 {
				line = located.Location()[0].Start.Line
			}
			switch c := command.(type) {
			case *instructions.RunCommand:
				for _, flag := range c.FlagsUsed {
					needsBuildKit(line, "RUN --"+flag)
				}
			case *instructions.CopyCommand:
				if c.Chmod != "" {
					needsBuildKit(line, "COPY --chmod")
				}
			case *instructions.AddCommand:
				if c.Chmod != "" {
					needsBuildKit(line, "ADD --chmod")
				}
			}
		}
	}
	return problems
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dockerfile-check FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		for _, problem := range check(path) {
			fmt.Fprintf(os.Stderr, "%s: %s\n", path, problem)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
