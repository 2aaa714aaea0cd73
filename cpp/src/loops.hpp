// The two computations, for a Problem that check.cpp has accepted.
#pragma once

#include <cstddef>

#include "problem.hpp"

namespace dotattn::detail {

// The blocked online-softmax forward pass: writes p.out (and p.lse).
// `count` problems (the sequences of a packed batch) in one pass.
template <class T>
void attention_loop(const Problem* problems, std::size_t count);

// The softmax probabilities: writes p.out as (batch, Hq, L, S).
template <class T>
void weights_loop(const Problem& p);

}  // namespace dotattn::detail
