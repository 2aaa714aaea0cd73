// The two computations, for a Problem that check.cpp has accepted.
#pragma once

#include "problem.hpp"

namespace dotattn::detail {

// The blocked online-softmax forward pass: writes p.out (and p.lse).
template <class T>
void attention_loop(const Problem& p);

// The softmax probabilities: writes p.out as (batch, Hq, L, S).
template <class T>
void weights_loop(const Problem& p);

}  // namespace dotattn::detail
