// main() of dotattn_tests: `dotattn_tests [suite...]` runs the tests of the
// named suites (every test without arguments), `dotattn_tests --list` lists
// them. Prints one line per test and a summary; exits 1 if a check failed
// or no test matched, so a misspelt suite in CMakeLists.txt fails too.
#include "harness.hpp"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace dotattn_test {
namespace {

struct Test {
  const char* suite;
  const char* name;
  TestFunction function;
};

std::vector<Test>& registry() {
  static std::vector<Test> tests;
  return tests;
}

std::vector<std::string>& contexts() {
  static std::vector<std::string> stack;
  return stack;
}

const Test* g_running = nullptr;
int g_failures = 0;  // of the running test
constexpr int kPrintedFailures = 10;

void report(const std::string& what) {
  ++g_failures;
  if (g_failures > kPrintedFailures) return;
  std::fprintf(stderr, "  FAILED in %s.%s: %s\n", g_running->suite, g_running->name, what.c_str());
  for (const std::string& c : contexts()) std::fprintf(stderr, "    while: %s\n", c.c_str());
  if (g_failures == kPrintedFailures)
    std::fprintf(stderr, "  (further failures of this test are counted, not printed)\n");
}

}  // namespace

Register::Register(const char* suite, const char* name, TestFunction function) {
  registry().push_back({suite, name, function});
}

void fail(const char* file, int line, const std::string& what) {
  report(std::string(file) + ":" + std::to_string(line) + ": " + what);
}

Context::Context(std::string description) { contexts().push_back(std::move(description)); }
Context::~Context() { contexts().pop_back(); }

void check_message(const char* file, int line, const char* message, const std::string& text) {
  if (std::strstr(message, text.c_str()) == nullptr)
    fail(file, line, "message \"" + std::string(message) + "\" does not contain \"" + text + "\"");
}

}  // namespace dotattn_test

int main(int argc, char** argv) {
  using namespace dotattn_test;
  std::vector<std::string> suites(argv + 1, argv + argc);
  if (suites.size() == 1 && suites[0] == "--list") {
    for (const Test& t : registry()) std::printf("%s.%s\n", t.suite, t.name);
    return 0;
  }
  int run = 0, failed = 0;
  for (const Test& t : registry()) {
    bool selected = suites.empty();
    for (const std::string& s : suites) selected = selected || s == t.suite;
    if (!selected) continue;
    g_running = &t;
    g_failures = 0;
    const auto start = std::chrono::steady_clock::now();
    try {
      t.function();
    } catch (const std::exception& error) {
      report(std::string("uncaught exception: ") + error.what());
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%-6s %s.%s (%.3f s)\n", g_failures ? "FAILED" : "ok", t.suite, t.name, seconds);
    std::fflush(stdout);
    ++run;
    failed += g_failures ? 1 : 0;
  }
  std::printf("%d tests, %d failed\n", run, failed);
  if (run == 0) std::fprintf(stderr, "no test matched\n");
  return run == 0 || failed ? 1 : 0;
}
