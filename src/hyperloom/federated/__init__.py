"""Personalised federated learning with hypernetworks (pFedHN, Shamsian et al., ICML 2021).

Flower-free building blocks, usable from any loop (the ``federated`` recipe's in-process engine
and its Flower app both use them):

- the paper's LeNet-style target, :func:`lenet`;
- non-IID partitions: :func:`class_shares` (each client gets a few classes) and
  :func:`dirichlet_shares` (Dirichlet(alpha) class proportions), applied to a split's labels by
  :func:`partition_clients` (the same shares for the train and the test split);
- the client's side: :func:`train_local` (inner SGD steps from the received weights) and
  :func:`evaluate`;
- the server's side: :func:`pfedhn_grads` and :func:`pfedhn_step`, which push the client's weight
  change back through the hypernetwork,

  .. math:: \\nabla_{\\Phi, e_i} = (\\partial \\theta_i / \\partial (\\Phi, e_i))^\\top
            (\\theta_i - \\tilde\\theta_i),

  computed as one vector-Jacobian product, ``torch.autograd.grad(theta, params,
  grad_outputs=theta - theta_tilde)``. Which parameters move is the optimizer's choice: the
  whole hypernetwork and the client's embedding in training; the new client's embedding row
  alone (the hypernetwork frozen) when a client joins after training (:func:`embedding_optimizer`);
- pFedHN-PC: the parameters the hypernetwork does not generate (the classifier head) stay on the
  client, :func:`personal_weights`;
- robustness: :func:`check_reply` (names, shapes, dtype, finiteness after the cast to the
  server's dtype, and a trust bound on the update's norm; a reason or ``None``),
  :func:`collect_replies` (failing, timed-out or dropped clients are skipped and logged), and
  :func:`fedavg` (weighted average, for the baselines of the in-process engine).

Logging goes to the ``hyperloom.federated`` logger.
"""

from ._methods import IDLE_EMBEDDINGS as IDLE_EMBEDDINGS
from ._methods import MAX_SERVER_GRAD_NORM as MAX_SERVER_GRAD_NORM
from ._methods import Replies as Replies
from ._methods import check_reply as check_reply
from ._methods import class_shares as class_shares
from ._methods import collect_replies as collect_replies
from ._methods import dirichlet_shares as dirichlet_shares
from ._methods import embedding_optimizer as embedding_optimizer
from ._methods import evaluate as evaluate
from ._methods import fedavg as fedavg
from ._methods import partition_clients as partition_clients
from ._methods import personal_weights as personal_weights
from ._methods import pfedhn_grads as pfedhn_grads
from ._methods import pfedhn_step as pfedhn_step
from ._methods import train_local as train_local
