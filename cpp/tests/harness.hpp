// A minimal test harness for the C++ unit tests: TEST(suite, name)
// registers a function, CHECK and CHECK_THROWS record failures and let the
// test go on, Context adds a line of circumstances (ISA, shape, ...) to the
// failures reported while it lives. harness.cpp has main(): it runs the
// tests of the suites named on the command line (all without arguments)
// and exits nonzero if any check failed or no test matched.
#pragma once

#include <exception>
#include <string>

namespace dotattn_test {

using TestFunction = void (*)();

struct Register {
  Register(const char* suite, const char* name, TestFunction function);
};

// Records a failed check of the running test and prints it with the
// current context.
void fail(const char* file, int line, const std::string& what);

// A description of what the enclosed checks are about, printed with each
// failure until it goes out of scope; contexts nest.
class Context {
 public:
  explicit Context(std::string description);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
};

// Checks that an exception's message contains `text`.
void check_message(const char* file, int line, const char* message, const std::string& text);

}  // namespace dotattn_test

#define DOTATTN_TEST_CONCAT2(a, b) a##b
#define DOTATTN_TEST_CONCAT(a, b) DOTATTN_TEST_CONCAT2(a, b)

#define TEST(suite, name)                                                                  \
  static void suite##_##name();                                                            \
  static const ::dotattn_test::Register DOTATTN_TEST_CONCAT(suite##_##name##_, __LINE__)( \
      #suite, #name, &suite##_##name);                                                     \
  static void suite##_##name()

#define CHECK(condition)                                                      \
  do {                                                                        \
    if (!(condition)) ::dotattn_test::fail(__FILE__, __LINE__, "CHECK(" #condition ")"); \
  } while (0)

// CHECK_THROWS(statement, exception type, text): the statement throws that
// type (exactly that one: argument_error and dtype_error are siblings) with
// a message containing text.
#define CHECK_THROWS(statement, type, text)                                                   \
  do {                                                                                        \
    bool dotattn_test_thrown = false;                                                         \
    try {                                                                                     \
      statement;                                                                              \
    } catch (const type& error) {                                                             \
      dotattn_test_thrown = true;                                                             \
      ::dotattn_test::check_message(__FILE__, __LINE__, error.what(), text);                 \
    } catch (const std::exception& error) {                                                   \
      dotattn_test_thrown = true;                                                             \
      ::dotattn_test::fail(__FILE__, __LINE__,                                                \
                           #statement " threw another exception than " #type ": " +           \
                               std::string(error.what()));                                    \
    }                                                                                         \
    if (!dotattn_test_thrown)                                                                 \
      ::dotattn_test::fail(__FILE__, __LINE__, #statement " did not throw " #type);           \
  } while (0)
